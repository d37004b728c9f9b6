"""Cost of a prefill-once sweep relative to evaluating the full cache alone, measured in one run.

For each sample, alternately: the engine with only ``full``, and the engine with full + the
seven methods x three budgets of the RULER command (decoded one by one, and batched 8 at a
time). Writes benchmarks/results/sweep_cost.md.

    .venv/bin/python benchmarks/sweep_cost.py [--samples 6] [--length 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from restkv.eval.engine import Engine
from restkv.eval.tasks import ruler
from restkv.generation import encode_prompt, eos_ids
from restkv.models import load_model
from restkv.specs import MethodConfig

METHODS = ["restkv", "snapkv", "pyramidkv", "h2o", "tova", "streamingllm"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    loaded = load_model()
    count = lambda t: encode_prompt(loaded.tokenizer, t).shape[1]  # noqa: E731
    tasks = ["niah_single_1", "niah_multikey_2", "vt", "cwe", "fwe", "niah_multivalue"]
    samples = [
        ruler.ruler_samples(tasks[i % len(tasks)], 1, args.length, count, seed=i)[0] for i in range(args.samples)
    ]
    full_only = Engine(loaded.model, [MethodConfig.make("full")])
    configs = [MethodConfig.make("full")] + [MethodConfig.make(m, b) for m in METHODS for b in (128, 256, 512)]
    sweep = Engine(loaded.model, configs)
    eos = eos_ids(loaded.tokenizer, loaded.model)
    times = {"full only": [], "sweep, batch 1": [], "sweep, batch 8": []}
    for s in samples:
        ids = encode_prompt(loaded.tokenizer, s.prompt, answer_prefix=s.answer_prefix)
        for label, engine, batch in (
            ("full only", full_only, 1),
            ("sweep, batch 1", sweep, 1),
            ("sweep, batch 8", sweep, 8),
        ):
            start = time.perf_counter()
            engine.run(ids, s.max_new_tokens, eos, batch=batch)
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["full only"])
    lines = [
        f"# Sweep cost: {len(configs)} configs vs the full cache alone ({args.length} tokens, {args.samples} RULER samples)",
        "",
        "Command: `.venv/bin/python benchmarks/sweep_cost.py " + f"--samples {args.samples} --length {args.length}`",
        "",
        "| run | median s per sample | ratio to full only |",
        "|---|---|---|",
    ]
    for label, values in times.items():
        lines.append(f"| {label} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f} |")
    out = Path(__file__).parent / "results" / "sweep_cost.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
