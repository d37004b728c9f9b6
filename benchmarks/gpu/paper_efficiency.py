"""The paper's 128K efficiency claims on one GPU: decode speedup over the full cache, peak memory,
and ReST-KV's prefill overhead against SnapKV, on a Llama-3.1-8B-shaped model with random weights.

    python benchmarks/gpu/paper_efficiency.py --out runs/gpu-128k            # one H200, about 10 minutes
    python benchmarks/gpu/paper_efficiency.py --out runs/gpu-smoke --smoke   # a toy shape on a CPU (CI)

The paper reports about 2% prefill overhead over SnapKV, 10.61x faster decoding than the full
cache and about 36% lower peak memory at 128K (Llama-3.1-8B-Instruct, budget 1024). Timing and
memory do not depend on the weights, so random weights and fewer layers (``--layers``; every
layer costs the same) keep the run inside the time one GPU is lent for. Everything goes through
``restkv bench`` (one results store per measurement); this script only orders the runs and
reads the ratios back. Prints one JSON summary and writes it to ``--out/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FULL, RESTKV, SNAPKV = "full", "restkv", "snapkv"


def bench(kind: str, out: Path, setting: dict) -> None:
    cmd = [sys.executable, "-m", "restkv", "bench", kind, "--out", str(out / kind), "--shape", setting["shape"],
           "--layers", str(setting["layers"]), "--lengths", str(setting["length"]), "--budgets", str(setting["budget"]),
           "--device", setting["device"], "--dtype", setting["dtype"]]  # fmt: skip
    if kind == "latency":
        cmd += ["--methods", f"{FULL},{RESTKV},{SNAPKV}", "--repeats", str(setting["repeats"])]
        cmd += ["--decode-tokens", str(setting["decode_tokens"])]
    else:
        cmd += ["--methods", f"{FULL},{RESTKV}", "--decode-tokens", str(setting["decode_tokens"])]
    subprocess.run(cmd, check=True)


def rows(out: Path, kind: str) -> dict[str, dict]:
    from restkv.eval.store import ResultStore

    with ResultStore(out / kind / "results.sqlite") as store:
        return {row["method"]: row for row in store.rows(task=f"bench-{kind}")}


def summary(out: Path, setting: dict, wall_s: float) -> dict:
    latency, memory = rows(out, "latency"), rows(out, "memory")
    full_mem, restkv_mem = memory[FULL]["extra"], memory[RESTKV]["extra"]
    return {
        **setting,
        "prefill_restkv_over_snapkv": latency[RESTKV]["prefill_s"] / latency[SNAPKV]["prefill_s"],
        "decode_speedup_over_full": latency[FULL]["decode_ms_per_token"] / latency[RESTKV]["decode_ms_per_token"],
        "decode_ms_per_token": {m: latency[m]["decode_ms_per_token"] for m in latency},
        "prefill_s": {m: latency[m]["prefill_s"] for m in latency},
        "peak_prefill_mib": {FULL: full_mem["prefill_peak_mib"], RESTKV: restkv_mem["prefill_peak_mib"]},
        "peak_memory_reduction": 1 - restkv_mem["prefill_peak_mib"] / full_mem["prefill_peak_mib"],
        "paper": {"prefill_restkv_over_snapkv": 1.02, "decode_speedup_over_full": 10.61, "peak_memory_reduction": 0.36},
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="a toy shape at 512 tokens on the CPU")
    parser.add_argument("--layers", type=int, default=8, help="layers of the 8B shape kept (default 8 of 32)")
    args = parser.parse_args()
    if args.smoke:
        setting = dict(shape="llama-tiny", layers=2, length=512, budget=64, device="cpu", dtype="float32",
                       repeats=1, decode_tokens=4)  # fmt: skip
    else:
        setting = dict(shape="llama-3.1-8b", layers=args.layers, length=131072, budget=1024, device="cuda",
                       dtype="bfloat16", repeats=3, decode_tokens=32)  # fmt: skip
    start = time.perf_counter()
    for kind in ("latency", "memory"):
        bench(kind, args.out, setting)
    result = summary(args.out, setting, time.perf_counter() - start)
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
