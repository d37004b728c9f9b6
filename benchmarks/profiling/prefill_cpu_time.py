"""Prefill cost of one press against another, measured in CPU time as well as wall time.

On a machine shared with other jobs the wall time of a prefill swings by more than the 2% to be
settled (see ``results/bench-prefill-interleaved/``). With one torch thread every operation
runs on the calling thread, so that thread's CPU time (``time.thread_time``) counts the work
itself and not the time spent waiting for a core: it is far less sensitive to the machine's
load (it still moves a little with cache and memory-bandwidth contention). Hardware instruction
counters would be better still, but ``perf stat -e instructions`` reports ``<not supported>``
on this virtual machine, and ``valgrind --tool=callgrind`` runs a 4K-token prefill 50-100x slower
than native, too slow for repeats.

The presses take turns within each repeat (after one warm-up each), as ``restkv bench latency``
does, and the prompt is the same random-token prompt that command uses.

    .venv/bin/python benchmarks/profiling/prefill_cpu_time.py --lengths 4096,8192 --repeats 5 \\
        --out benchmarks/results/bench-prefill-interleaved/cpu_time_smollm2.json
    .venv/bin/python benchmarks/profiling/prefill_cpu_time.py --shape llama-3.1-8b --layers 1 --dtype float32 \\
        --lengths 4096,8192 --repeats 5 --out .../cpu_time_llama8b_1L.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def load(args):
    if args.shape:
        from restkv.bench.shapes import random_model

        return random_model(args.shape, args.layers, args.dtype)
    from restkv.models import load_model

    return load_model().model


@torch.inference_mode()
def measure(model, length: int, methods: list[str], budget: int, repeats: int) -> dict:
    from transformers import DynamicCache

    from restkv.generation import prefill
    from restkv.press import get_press

    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(length))
    presses = {m: get_press(m, budget=budget) for m in methods}

    def run(press) -> tuple[float, float, float]:
        cache = DynamicCache(config=model.config)
        wall, cpu, proc = time.perf_counter(), time.thread_time(), time.process_time()
        with press(model):
            prefill(model, ids, cache)
        return time.perf_counter() - wall, time.thread_time() - cpu, time.process_time() - proc

    for press in presses.values():  # warm-up
        run(press)
    rows = {m: {"wall_s": [], "thread_cpu_s": [], "process_cpu_s": [], "load1": []} for m in methods}
    for repeat in range(repeats):
        for m, press in presses.items():
            wall, cpu, proc = run(press)
            for key, value in (("wall_s", wall), ("thread_cpu_s", cpu), ("process_cpu_s", proc)):
                rows[m][key].append(round(value, 4))
            rows[m]["load1"].append(os.getloadavg()[0])
            print(f"{length} {m} repeat {repeat}: wall {wall:.2f} s, thread cpu {cpu:.2f} s, load {os.getloadavg()[0]:.1f}",
                  flush=True)  # fmt: skip
    return rows


def summarize(rows: dict, base: str, other: str) -> dict:
    out = {}
    for key in ("wall_s", "thread_cpu_s"):
        a, b = rows[other][key], rows[base][key]
        out[key] = {
            f"{other}_median": statistics.median(a), f"{base}_median": statistics.median(b),
            "ratio_of_medians": statistics.median(a) / statistics.median(b),
            "ratio_of_minima": min(a) / min(b),
            # per repeat: the two presses ran back to back, so their ratio shares conditions
            "median_of_paired_ratios": statistics.median(x / y for x, y in zip(a, b)),
        }  # fmt: skip
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", help="random-weight model of a named shape (restkv.bench.shapes)")
    parser.add_argument("--layers", type=int, help="with --shape: this many layers")
    parser.add_argument("--dtype", default="float32", help="with --shape")
    parser.add_argument("--lengths", default="4096,8192", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--methods", default="restkv,snapkv", help="the first is compared with the second")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    start = time.perf_counter()
    model = load(args)
    result = {"args": vars(args), "torch_threads": torch.get_num_threads(), "lengths": {}}
    for length in args.lengths:
        rows = measure(model, length, methods, args.budget, args.repeats)
        result["lengths"][length] = {"runs": rows, "summary": summarize(rows, methods[1], methods[0])}
        print(json.dumps({length: result["lengths"][length]["summary"]}, indent=1), flush=True)
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
