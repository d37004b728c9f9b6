"""A sliding-window layer's prefill: SDPA under transformers' dense window mask against restkv's band
block mask on FlexAttention (``restkv.sparse_prefill.Band``, issue 37).

Under SDPA a sliding-window layer gets a ``[n, n]`` mask and computes every query-key pair, masking
all but ``window`` per row away; the band block mask computes only the tiles the window touches.
One layer of gemma-3-270m's shape (4 query heads, 1 KV head, head size 256, window 512), medians of
``--repeats`` interleaved calls after one untimed call each (flex compiles there), outputs compared.

    .venv/bin/python benchmarks/profiling/sliding_band.py [--lengths 4096,8192,16384] [--dtype float32] [--out FILE.json]
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

from restkv.sparse_prefill import Band, sparse_attention

HEADS, KV_HEADS, HEAD_DIM = 4, 1, 256


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, n, HEAD_DIM, generator=gen, dtype=dtype) for h in (HEADS, KV_HEADS, KV_HEADS))
    index = torch.arange(n)
    window = (index <= index[:, None]) & (index[:, None] - index < args.window)
    runs = {
        "sdpa, window mask": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=window, enable_gqa=True
        ).transpose(1, 2),
        "flex, band": lambda: sparse_attention(q, k, v, Band(n, args.window), None),
    }
    first = {name: round(timed(run), 3) for name, run in runs.items()}
    error = (runs["flex, band"]().float() - runs["sdpa, window mask"]().float()).abs().max().item()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(run))
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "tokens": n, "dtype": args.dtype, "median_s": {k: round(x, 4) for k, x in median.items()},
        "all_s": {k: [round(x, 4) for x in t] for k, t in times.items()}, "first_call_s": first,
        "band_over_sdpa": round(median["flex, band"] / median["sdpa, window mask"], 4),
        "tiles_touched": round(Band(n, args.window).kept_share(), 4), "max_abs_difference": error,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load, started = os.getloadavg(), time.perf_counter()
    rows = []
    with torch.inference_mode():
        for n in (int(x) for x in args.lengths.split(",")):
            rows.append(measure(n, args))
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "rows": rows, "settings": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - started, 1), "load_before": load, "load_after": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
