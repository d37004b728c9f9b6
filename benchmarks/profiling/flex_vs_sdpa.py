"""Is PyTorch's FlexAttention, on this CPU, fast enough to build block-sparse prefill on? (issue 37)

One attention layer of SmolLM2's shape (9 query heads, 3 KV heads, head size 64, float32) over a
prompt of ``n`` tokens, four ways, interleaved ``--repeats`` times, the median wall time of each:

* ``sdpa``: ``scaled_dot_product_attention(is_causal=True)``, dense (what prefill runs today);
* ``flex causal``: compiled ``flex_attention`` with a causal block mask (the same work as dense:
  its overhead over SDPA);
* ``flex tri-shape``: a causal block mask that keeps the first ``--sink`` tokens, the last
  ``--local`` tokens before each query, and every key for the prompt's last ``--last`` queries
  (the A-shape / tri-shape pattern of MInference and OpenVINO GenAI);
* the share of the causal blocks the tri-shape mask keeps, which bounds the speed-up it can give.

Compilation (first call per shape) is timed apart. Outputs are compared: flex causal must equal
SDPA to float32 rounding.

    .venv/bin/python benchmarks/profiling/flex_vs_sdpa.py [--lengths 4096,8192,16384] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def tri_shape(sink: int, local: int, last_from: int):
    def mask(b, h, q, k):
        causal = k <= q
        return causal & ((k < sink) | (q - k < local) | (q >= last_from))

    return mask


def causal(b, h, q, k):
    return k <= q


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n: int, args, compiled) -> dict:
    torch.manual_seed(0)
    q = torch.randn(1, HEADS, n, HEAD_DIM)
    k = torch.randn(1, KV_HEADS, n, HEAD_DIM)
    v = torch.randn(1, KV_HEADS, n, HEAD_DIM)
    block = args.block
    dense_mask = create_block_mask(causal, 1, 1, n, n, device="cpu", BLOCK_SIZE=block)
    sparse_mask = create_block_mask(tri_shape(args.sink, args.local, n - args.last), 1, 1, n, n, device="cpu",
                                    BLOCK_SIZE=block)  # fmt: skip
    runs = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "flex causal": lambda: compiled(q, k, v, block_mask=dense_mask, enable_gqa=True),
        "flex tri-shape": lambda: compiled(q, k, v, block_mask=sparse_mask, enable_gqa=True),
    }
    first = {name: round(timed(run), 2) for name, run in runs.items()}  # compiles flex per shape
    reference = runs["sdpa"]()
    error = (runs["flex causal"]() - reference).abs().max().item()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    median = {name: statistics.median(t) for name, t in times.items()}
    kept = sparse_mask.to_dense().sum().item() / dense_mask.to_dense().sum().item()
    return {
        "tokens": n,
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "first_call_s": first,
        "flex_causal_over_sdpa": round(median["flex causal"] / median["sdpa"], 3),
        "tri_shape_over_sdpa": round(median["flex tri-shape"] / median["sdpa"], 3),
        "tri_shape_blocks_kept": round(kept, 3),
        "flex_causal_max_abs_error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--sink", type=int, default=128)
    parser.add_argument("--local", type=int, default=1024)
    parser.add_argument("--last", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compiled = torch.compile(flex_attention, dynamic=False)
    load = os.getloadavg()
    started = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for n in (int(x) for x in args.lengths.split(",")):
            rows.append(measure(n, args, compiled))
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "rows": rows,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_before": load,
        "load_after": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
