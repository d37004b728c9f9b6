"""Per-layer cost of ReST-KV's scorer against SnapKV's, on random tensors of real attention shapes.

One ``select`` call per layer, as the press makes it; the two scorers take turns within each
repeat. Time is the calling thread's CPU time with one torch thread (``time.thread_time``),
which on a shared machine counts the work and not the waits for a core; the table gives the
median and the minimum of the repeats.

Run it twice to compare two versions of the library: once as is, once with ``PYTHONPATH``
pointing at the other version's ``src`` (SnapKV's scorer is the same in both, so its column
shows whether the two runs saw the same machine).

    .venv/bin/python benchmarks/profiling/scorer_cost.py --out runs/scorer_cost_new.json
    PYTHONPATH=/path/to/old/src .venv/bin/python benchmarks/profiling/scorer_cost.py --out runs/scorer_cost_old.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

#: name -> (query heads, KV heads, head dim, hidden size)
SHAPES = {"smollm2-135m": (9, 3, 64, 576), "llama-3.1-8b": (32, 8, 128, 4096)}


def main():
    import restkv
    from restkv.scorers import get_scorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,8192,32768", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--budgets", default="128,512", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    window = 32
    scorers = {"restkv": get_scorer("restkv"), "snapkv": get_scorer("snapkv")}
    rows = []
    start = time.perf_counter()
    for shape in args.shapes.split(","):
        heads, kv_heads, dim, hidden = SHAPES[shape]
        for n in args.lengths:
            gen = torch.Generator().manual_seed(n)
            q = torch.randn(1, heads, window, dim, generator=gen)
            k, v = torch.randn(1, kv_heads, n, dim, generator=gen), torch.randn(1, kv_heads, n, dim, generator=gen)
            w_o = torch.randn(hidden, heads * dim, generator=gen) / hidden**0.5
            for budget in args.budgets:
                times = {name: [] for name in scorers}
                for repeat in range(args.repeats + 1):  # the first round warms up
                    for name, scorer in scorers.items():
                        begin = time.thread_time()
                        scorer.select(q, k, v, budget=budget, o_proj=w_o)
                        if repeat:
                            times[name].append(1000 * (time.thread_time() - begin))
                row = {"shape": shape, "tokens": n, "budget": budget}
                for name, t in times.items():
                    row[f"{name}_ms_median"], row[f"{name}_ms_min"] = statistics.median(t), min(t)
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"library": restkv.__file__, "wall_time_s": round(time.perf_counter() - start, 1), "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
