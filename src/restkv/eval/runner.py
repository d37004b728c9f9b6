"""Runs a sweep of methods and budgets over a task's samples into a results store, resumably."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..generate import encode_prompt
from ..window import question_window
from .engine import Engine, MethodConfig
from .store import ResultStore
from .tasks.base import Sample


def eos_ids(tokenizer, model=None) -> set[int]:
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update(source if isinstance(source, list) else [source])
    return ids - {None}


def public_meta(sample: Sample) -> dict:
    """The sample's metadata worth keeping in every row (token id lists are not)."""
    return {k: v for k, v in sample.meta.items() if not k.endswith("_ids")}


def run_sweep(
    loaded,
    task: str,
    samples: list[Sample],
    configs: list[MethodConfig],
    store: ResultStore,
    score: Callable[[str, Sample], float],
    progress: bool = True,
    batch: int = 1,
) -> dict:
    """Evaluate every config on every sample; rows already in ``store`` are skipped.

    Returns counters: samples run and skipped, wall seconds, and the prefill seconds spent.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = Engine(model, configs)
    ranges = [p.window_range for p in engine.presses.values() if getattr(p, "window_range", None)]
    stop = eos_ids(tokenizer, model)
    counters = {"samples_run": 0, "samples_skipped": 0, "wall_s": 0.0, "prefill_s": 0.0, "compress_s": 0.0}
    start = time.perf_counter()
    bar = tqdm(samples, desc=f"{task} ({len(configs)} configs)", unit="sample", disable=not progress)
    for sample in bar:
        todo = [c for c in configs if not store.has(task, sample.id, loaded.name, c.label, c.budget)]
        if not todo:
            counters["samples_skipped"] += 1
            continue
        if "prompt_ids" in sample.meta:  # fidelity: teacher forcing, nothing generated
            input_ids = torch.tensor([sample.meta["prompt_ids"]])
            outcomes = engine.fidelity(input_ids, sample.meta["continuation_ids"], configs=todo, batch=batch)
        else:
            chat = loaded.chat and sample.meta.get("chat", True)
            input_ids = encode_prompt(tokenizer, sample.prompt, chat=chat, answer_prefix=sample.answer_prefix)
            window = None
            if ranges:  # the question's length in tokens, for presses with an auto window
                window = question_window(tokenizer, sample.prompt, chat, sample.answer_prefix, *ranges[0])
            outcomes = engine.run(input_ids, sample.max_new_tokens, stop, configs=todo, batch=batch, window=window)
        rows = []
        for o in outcomes:
            text = tokenizer.decode([t for t in o.token_ids if t not in stop], skip_special_tokens=True)
            rows.append(
                {
                    "task": task,
                    "sample_id": sample.id,
                    "model": loaded.name,
                    "method": o.config.label,
                    "budget": o.config.budget,
                    "params": {"method": o.config.method, **engine.presses[o.config].params()},
                    "prediction": text,
                    "score": o.top1 if "prompt_ids" in sample.meta else score(text, sample),
                    "prompt_tokens": o.prompt_tokens,
                    "kept_entries": o.kept_entries,
                    "kv_bytes": o.kv_bytes,
                    "prefill_s": o.prefill_s,
                    "compress_s": o.compress_s,
                    "decode_ms_per_token": o.decode_ms_per_token,
                    "kl": o.kl,
                    "top1": o.top1,
                    "extra": {**public_meta(sample), **o.extra, "answers": sample.answers},
                }
            )
        store.add(rows)
        counters["samples_run"] += 1
        counters["prefill_s"] += outcomes[0].prefill_s - outcomes[0].compress_s
        counters["compress_s"] += sum(o.compress_s for o in outcomes)
    counters["wall_s"] = time.perf_counter() - start
    return counters
