"""Cost of a prefill-once sweep relative to evaluating the full cache alone, measured in one run.

For each sample, in turn: the engine with only ``full``, and the engine with full + the six
methods x three budgets of the README's RULER command, each with and without the tasks'
answer-complete stops (:mod:`restkv.eval.tasks.stops`), batched 8 at a time (the CLI default
before ``--batch auto``) and, with stops, all 18 compressed caches in one batch (what
``--batch auto`` does here). Also reports where the sweep's time goes, how many tokens each row
decoded, and whether any prediction's score changed with stops (it must not) or its tokens
stopped being a prefix of the unstopped ones. The steps are the phases the engine marks
(:mod:`restkv.timing`).

    .venv/bin/python benchmarks/profiling/sweep_cost.py [--samples 6] [--length 1024] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import torch

from restkv.eval.engine import Engine
from restkv.eval.tasks import ruler
from restkv.eval.tasks.stops import AnswerStop, prediction_reader
from restkv.generation import encode_prompt, eos_ids
from restkv.models import load_model
from restkv.specs import MethodConfig
from restkv.timing import record_phases

METHODS = ["restkv", "snapkv", "pyramidkv", "h2o", "tova", "streamingllm"]
TASKS = ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe", "niah_multivalue"]
#: the table's steps, each one of the engine's phases; decoding without a press is the full
#: cache's reference, and batched rows teacher-force the reference before decoding what leaves
#: it (rows decoded alone teacher-force after decoding): either way that is the fidelity's forward
STEPS = {
    "prefill": "prefill",
    "full-cache decode": "full_decode",
    "compress": "compress",
    "stack": "stack",
    "compressed decode": "decode",
    "fidelity (teacher forcing)": "teacher_forcing",
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "sweep_cost_run.md"))
    args = parser.parse_args()
    loaded = load_model()
    count = lambda t: encode_prompt(loaded.tokenizer, t).shape[1]  # noqa: E731
    samples = [
        (TASKS[i % len(TASKS)], ruler.ruler_samples(TASKS[i % len(TASKS)], 1, args.length, count, seed=i)[0])
        for i in range(args.samples)
    ]
    eos = eos_ids(loaded.tokenizer, loaded.model)
    read = prediction_reader(loaded.tokenizer, eos)
    full_only = Engine(loaded.model, [MethodConfig.make("full")], text=read)
    configs = [MethodConfig.make("full")] + [MethodConfig.make(m, b) for m in METHODS for b in (128, 256, 512)]
    sweep = Engine(loaded.model, configs, text=read)
    runs = (  # label, engine, batch, with stops
        ("full only, no stops", full_only, 1, False),
        ("full only, stops", full_only, 1, True),
        ("sweep, batch 8, no stops", sweep, 8, False),
        ("sweep, batch 8, stops", sweep, 8, True),
        ("sweep, one batch of 18, stops", sweep, 18, True),
    )
    times = {label: [] for label, *_ in runs}
    steps = {label: defaultdict(float) for label, *_ in runs}
    tokens = {label: 0 for label, *_ in runs}
    stopped = {label: defaultdict(int) for label, *_ in runs}
    changed, not_prefix, compared = [], 0, 0
    load_before = uptime()
    wall = time.perf_counter()
    for task, s in samples:
        ids = encode_prompt(loaded.tokenizer, s.prompt, answer_prefix=s.answer_prefix)
        score = ruler.score(task)
        predictions = {}
        for label, engine, batch, stops in runs:
            answer = AnswerStop.of(s) if stops else None
            with record_phases() as phases:
                start = time.perf_counter()
                outcomes = engine.run(ids, s.max_new_tokens, eos, batch=batch, answer=answer)
                times[label].append(time.perf_counter() - start)
            for step, name in STEPS.items():
                steps[label][step] += phases.seconds[name]
            for o in outcomes:
                tokens[label] += len(o.token_ids)
                stopped[label][o.stopped] += 1
            predictions[label] = {o.config: o.token_ids for o in outcomes}
        for label in ("full only, stops", "sweep, batch 8, stops", "sweep, one batch of 18, stops"):
            whole = predictions["sweep, batch 8, no stops" if label.startswith("sweep") else "full only, no stops"]
            for config, cut in predictions[label].items():
                compared += 1
                not_prefix += cut != whole[config][: len(cut)]
                a, b = score(read(cut), s), score(read(whole[config]), s)
                if a != b:
                    changed.append(f"{s.id} {config.label}: {b} -> {a}")
        print(task, {label: round(values[-1], 2) for label, values in times.items()}, flush=True)
    wall = time.perf_counter() - wall
    raw = {"times": times, "steps": steps, "tokens": tokens, "stopped": stopped, "changed": changed}
    Path(args.out).with_suffix(".json").write_text(json.dumps({**raw, "not_prefix": not_prefix, "wall": wall}))
    base = statistics.median(times["full only, no stops"])
    base_stops = statistics.median(times["full only, stops"])
    rows = len(samples)
    lines = [
        f"## Interleaved run: {len(configs)} configs vs the full cache alone "
        f"({args.length} tokens, {args.samples} RULER prompts, {torch.get_num_threads()} threads)",
        "",
        "Command: `.venv/bin/python benchmarks/profiling/sweep_cost.py "
        + f"--samples {args.samples} --length {args.length}` ({wall:.0f} s wall)",
        "",
        f"Load before: `{load_before}`; after: `{uptime()}` ({os.cpu_count()} CPUs)",
        "",
        "| run | median s per prompt | ratio to full only, no stops | ratio to full only, stops "
        "| tokens decoded per prompt | rows stopped by end token / answer / limit |",
        "|---|---|---|---|---|---|",
    ]
    for label, values in times.items():
        m = statistics.median(values)
        why = stopped[label]
        lines.append(
            f"| {label} | {m:.2f} | {m / base:.2f} | {m / base_stops:.2f} | {tokens[label] / rows:.0f} "
            f"| {why['eos']} / {why['answer']} / {why['limit']} |"
        )
    lines += [
        "",
        "Where the time goes (seconds per prompt, mean over the prompts):",
        "",
        "| step | " + " | ".join(label for label, *_ in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for step in STEPS:
        lines.append(f"| {step} | " + " | ".join(f"{steps[label][step] / rows:.2f}" for label, *_ in runs) + " |")
    lines.append("| total (wall) | " + " | ".join(f"{sum(times[label]) / rows:.2f}" for label, *_ in runs) + " |")
    lines += [
        "",
        f"Stops against no stops, {compared} predictions compared: {len(changed)} scores changed, "
        f"{not_prefix} token lists not a prefix of the unstopped ones.",
    ]
    lines += [f"- {c}" for c in changed]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
