"""Runs a sweep of methods and budgets over a task's samples into a results store, resumably."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..forecast import announce, measure, sweep_seconds
from ..generation import encode_prompt, eos_ids
from ..probes import probe_settings
from ..quantized import quantized_label
from ..specs import MethodConfig
from ..window import question_tokens, question_window
from .engine import Engine
from .jobs import Job, run_local
from .store import ResultStore
from .tasks.base import Sample
from .tasks.registry import MODES, TaskGroup
from .tasks.stops import AnswerStop, prediction_reader


def params_of(engine: Engine, config: MethodConfig) -> dict:
    params = {"method": config.method, **engine.presses[config].params()}
    if engine.kv_quant:
        params["kv_quant"] = "{}:{}".format(*engine.kv_quant)
    return params


def row_label(engine: Engine, config: MethodConfig) -> str:
    """The method's label in the store (see :func:`restkv.quantized.quantized_label`)."""
    return quantized_label(config.label, engine.kv_quant)


def public_meta(sample: Sample) -> dict:
    """The sample's metadata worth keeping in every row (token id lists are not)."""
    return {k: v for k, v in sample.meta.items() if not k.endswith("_ids")}


def sample_mode(sample: Sample) -> str:
    """The mode a sample needs when no family says: token ids to feed mean teacher forcing."""
    return "teacher_forced" if "prompt_ids" in sample.meta else "generate"


def setting_of(loaded, sample: Sample, params: dict, agnostic: bool = False) -> str:
    """A short hash of everything besides the row's key that changes its numbers: the model's
    dtype and device, the exact prompt (so task options such as a truncation length count),
    the answer budget, the method's resolved parameters (a profile's values, not its path),
    and, only when set, query-agnostic evaluation and the answer-stop rule (so other hashes stay
    as they were: a stop leaves scores as they were but shortens predictions and the answer
    over which KL is measured)."""
    model = loaded.model
    described = {
        "dtype": str(getattr(model, "dtype", "")), "device": str(getattr(model, "device", "")),
        "prompt": sample.prompt, "answer_prefix": sample.answer_prefix, "max_new_tokens": sample.max_new_tokens,
        "ids": [sample.meta.get("prompt_ids"), sample.meta.get("continuation_ids")], "params": params,
    }  # fmt: skip
    if agnostic:
        described.update(query_agnostic=True, question_at=sample.question_at)
    if sample.stop is not None:
        described["stop"] = sample.stop
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_sweep(
    loaded,
    task: str,
    samples: list[Sample],
    configs: list[MethodConfig],
    store: ResultStore,
    score: Callable[[str, Sample], float],
    progress: bool = True,
    batch: int | str = 1,
    mode: str | None = None,
    query_agnostic: bool = False,
    kv_quant: tuple[str, int] | None = None,
    executor=None,
) -> dict:
    """Evaluate every config on every sample; rows already in ``store`` are skipped.

    ``mode`` is the task family's (``"generate"`` or ``"teacher_forced"``); None infers it per
    sample from the metadata, as callers from before families had modes expect.
    ``query_agnostic``: compress each sample's context without its question (the part of the
    prompt from ``Sample.question_at`` on), then feed the question; consecutive samples with the
    same context share one compression per config.
    ``kv_quant``: ``(backend, bits)``: each cache is quantized after compression (rows are
    labelled ``<method>+<backend><bits>``).
    ``executor``: where jobs run (None: here; a :class:`~restkv.eval.jobs.RayExecutor`: on Ray
    actors); rows are written here either way.
    Returns counters: samples run and skipped, wall seconds, and the prefill seconds spent.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    model, tokenizer = loaded.model, loaded.tokenizer
    stop = eos_ids(tokenizer, model)
    read = prediction_reader(tokenizer, stop)  # the text a prediction is scored (and stopped) on
    engine = Engine(model, configs, kv_quant, text=read, **probe_settings(tokenizer))
    if query_agnostic:
        check_agnostic(task, samples, mode)
        engine.check_agnostic()
    check_store_mode(store, task, query_agnostic)
    ranges = {p.window_range for p in engine.presses.values() if p.window_range is not None}
    # the work left, decided before any runs: which configs each sample still needs
    plan = []
    labels = {c: row_label(engine, c) for c in configs}
    for sample in samples:
        settings = {c: setting_of(loaded, sample, params_of(engine, c), query_agnostic) for c in configs}
        todo = [c for c in configs if not store.has(task, sample.id, loaded.name, labels[c], c.budget, settings[c])]
        plan.append((sample, settings, todo))
    if progress and executor is None:
        forecast(loaded, task, [(s, todo) for s, _, todo in plan if todo], batch)

    counters = {"samples_run": 0, "samples_skipped": 0, "wall_s": 0.0, "prefill_s": 0.0, "compress_s": 0.0}
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc=f"{task} ({len(configs)} configs)", unit="sample", disable=not progress)

    def save(job: Job, per_sample: list) -> None:
        """Write a finished job's rows, one transaction per sample (the driver is the only writer)."""
        teacher_forced = job.kind == "teacher_forced"
        counters["prefill_s"] += per_sample[0][0].prefill_s - per_sample[0][0].compress_s
        for (sample, settings), outcomes in zip(job.samples, per_sample, strict=True):
            rows = []
            for o in outcomes:
                text = read(o.token_ids)
                extra = {**public_meta(sample), **o.extra, "answers": sample.answers}
                if o.stopped is not None:
                    extra["stopped"] = o.stopped  # eos, answer (complete) or limit
                if query_agnostic:
                    extra["mode"] = "query-agnostic"
                rows.append(
                    {
                        "task": task,
                        "sample_id": sample.id,
                        "model": loaded.name,
                        "method": row_label(engine, o.config),
                        "budget": o.config.budget,
                        "params": params_of(engine, o.config),
                        "setting": settings[o.config],
                        "prediction": text,
                        "score": o.top1 if teacher_forced else score(text, sample),
                        "prompt_tokens": o.prompt_tokens,
                        "kept_entries": o.kept_entries,
                        "kv_bytes": o.kv_bytes,
                        "prefill_s": o.prefill_s,
                        "compress_s": o.compress_s,
                        "decode_ms_per_token": o.decode_ms_per_token,
                        "kl": o.kl,
                        "top1": o.top1,
                        "extra": extra,
                    }
                )
            store.add(rows)
            counters["samples_run"] += 1
            counters["compress_s"] += sum(o.compress_s for o in outcomes)
            bar.update(1)

    def jobs():
        """The work left, in sample order: one job per prompt, or per shared context (query-agnostic)."""
        shared: Job | None = None  # query-agnostic samples waiting for the next context
        for sample, settings, todo in plan:
            if not todo:
                counters["samples_skipped"] += 1
                bar.update(1)
                continue
            if (mode or sample_mode(sample)) == "teacher_forced":  # fidelity: the continuation is fed
                ids = torch.tensor([sample.meta["prompt_ids"]])
                yield Job(
                    "teacher_forced", todo, ids, [(sample, settings)], continuation=sample.meta["continuation_ids"]
                )
                continue
            chat = loaded.chat and sample.meta.get("chat", True)
            input_ids = encode_prompt(tokenizer, sample.prompt, chat=chat, answer_prefix=sample.answer_prefix)
            if query_agnostic:
                context, question = split_question(tokenizer, sample, chat, input_ids)
                if shared is not None and (todo != shared.todo or not torch.equal(context, shared.ids)):
                    yield shared
                    shared = None
                shared = shared or Job("agnostic", todo, context)
                shared.samples.append((sample, settings))
                shared.questions.append((question, sample.max_new_tokens, AnswerStop.of(sample)))
                continue
            # the question's length in tokens, clipped to each auto-window press's own range
            window = {r: question_window(tokenizer, sample.prompt, chat, sample.answer_prefix, *r) for r in ranges}
            yield Job(
                "generate", todo, input_ids, [(sample, settings)], sample.max_new_tokens, window,
                answer=AnswerStop.of(sample),
            )  # fmt: skip
        if shared is not None:
            yield shared

    try:
        if executor is None:
            run_local(engine, jobs(), stop, batch, save)
        else:
            executor.run(configs, kv_quant, jobs(), stop, batch, save)
    finally:
        bar.close()
    counters["wall_s"] = time.perf_counter() - start
    return counters


def forecast(loaded, task: str, pending: list[tuple[Sample, list[MethodConfig]]], batch=1) -> None:
    """Say on stderr how long ``pending`` (samples and the configs each still needs) will take here."""
    if not pending:
        return
    lengths = [prompt_length(loaded, sample) for sample, _ in pending]
    rates = measure(loaded.model, max(lengths))
    work = [(n, s.max_new_tokens, len(todo)) for n, (s, todo) in zip(lengths, pending)]
    configs = max(len(todo) for _, todo in pending)
    what = f"{task}: {len(pending)} prompts x {configs} configurations to run"
    announce(what, sweep_seconds(rates, work, batch), rates)


def prompt_length(loaded, sample: Sample) -> int:
    """A sample's prompt in tokens, as the engine will see it."""
    if "prompt_ids" in sample.meta:
        return len(sample.meta["prompt_ids"])
    chat = loaded.chat and sample.meta.get("chat", True)
    return encode_prompt(loaded.tokenizer, sample.prompt, chat=chat, answer_prefix=sample.answer_prefix).shape[1]


def check_agnostic(task: str, samples: list[Sample], mode: str | None) -> None:
    """One sentence when ``task`` cannot be evaluated query-agnostic."""
    if mode == "teacher_forced" or any(sample_mode(s) == "teacher_forced" for s in samples):
        raise ValueError(f"{task} has no question (it feeds a continuation), so it has no query-agnostic mode")
    if any(s.question_at is None for s in samples):
        raise ValueError(f"{task} does not mark where its questions start, so it cannot be run query-agnostic")


def check_store_mode(store: ResultStore, task: str, agnostic: bool) -> None:
    """Rows of both modes share their keys, so one store holds one mode per task: a run in the
    other mode would replace finished rows."""
    ours, other = ("query-agnostic", "query-aware") if agnostic else ("query-aware", "query-agnostic")
    if other in store.modes(task):
        raise ValueError(f"the results store already holds {other} rows of {task}; give {ours} runs their own --out")


def split_question(tokenizer, sample: Sample, chat: bool, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` ``[1, n]`` cut where ``sample``'s question starts: (context, question and
    what follows it). The same tokens as the query-aware prompt, only split."""
    q = question_tokens(tokenizer, sample.prompt, chat, sample.answer_prefix, question_at=sample.question_at)
    if not 0 < q < input_ids.shape[1]:
        raise ValueError(f"sample {sample.id}: its question does not leave a context to compress")
    return input_ids[:, :-q], input_ids[:, -q:]


def run_eval(
    loaded,
    groups: list[TaskGroup],
    configs: list[MethodConfig],
    out_dir: str | Path,
    batch: int | str = "auto",
    command: str = "",
    mode: str | None = None,
    started: float | None = None,
    query_agnostic: bool = False,
    kv_quant: tuple[str, int] | None = None,
    executor=None,
) -> dict:
    """Sweep every group into ``out_dir/results.sqlite`` and log the run to ``out_dir/runs.jsonl``
    (see :func:`run_sweep` for ``mode``, ``query_agnostic``, ``kv_quant`` and ``executor``).

    ``started`` is the ``time.perf_counter()`` at which the command began, so the logged wall
    time includes loading the model and building the samples. Returns the summed counters
    with ``wall_s``.
    """
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    totals = {"samples_run": 0, "samples_skipped": 0, "prefill_s": 0.0, "compress_s": 0.0}
    with ResultStore(out_dir / "results.sqlite", writer=True) as store:
        for task, samples, score in groups:
            counters = run_sweep(
                loaded, task, samples, configs, store, score, batch=batch, mode=mode, query_agnostic=query_agnostic,
                kv_quant=kv_quant, executor=executor,
            )  # fmt: skip
            for key in totals:
                totals[key] += counters[key]
    wall = time.perf_counter() - started
    entry = {
        "command": command,
        "wall_s": round(wall, 1),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in totals.items()},
    }
    with open(out_dir / "runs.jsonl", "a") as log:
        log.write(json.dumps(entry) + "\n")
    return {**totals, "wall_s": wall}
