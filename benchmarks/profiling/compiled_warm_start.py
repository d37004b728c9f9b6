"""How long a new process's first compiled decoding step takes with an empty compile cache and with
the one a previous process left, measured in one run.

Each measurement is a fresh Python process (``--child``) that loads the embedded SmolLM2, builds a
synthetic budget-128 cache of a 1K-token prompt, and times its first ``StaticDecoder.step``
(compiling included) and then the mean of ``--steps`` more. ``RESTKV_HOME`` and inductor's cache
folder (``TORCHINDUCTOR_CACHE_DIR``) point into one temporary folder per run: the first process
finds them empty (cold), the next ones find what the earlier ones wrote (warm). The ratio
warm/cold is the answer; both come from the same run, on the same machine state.

    .venv/bin/python benchmarks/profiling/compiled_warm_start.py [--warm 2] [--dtype float32] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(dtype: str, steps: int, prepack: bool) -> dict:
    import contextlib

    import torch
    import torch._inductor.config
    from torch._dynamo.utils import counters

    from restkv.bench.latency import synthetic_cache
    from restkv.models import load_model
    from restkv.static_decode import StaticDecoder

    torch.set_num_threads(2)
    model = load_model(dtype=dtype).model
    # restkv's own settings patch only their keys, so this one stays in force inside them
    settings = contextlib.nullcontext() if prepack else torch._inductor.config.patch({"cpp.weight_prepack": False})
    with torch.inference_mode(), settings:
        cache = synthetic_cache(model, 1024, 128)
        start = time.perf_counter()
        decoder = StaticDecoder(model, cache, steps + 2, None, compile=True)
        decoder.step(torch.tensor([[3]]))
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            decoder.step(torch.tensor([[3]]))
        step_ms = (time.perf_counter() - start) / steps * 1000
    caches = {k: v for k, v in counters["inductor"].items() if "cache" in k or "bypass" in k}
    return {"first_step_s": round(first, 2), "step_ms": round(step_ms, 2), "inductor_counters": caches}


def measure(folder: Path, dtype: str, steps: int, prepack: bool) -> dict:
    home = folder / "home"
    if not home.exists():  # the converted models are shared, not converted again
        from restkv.models import restkv_home

        home.mkdir()
        (home / "models").symlink_to(restkv_home() / "models")
    env = dict(os.environ, RESTKV_HOME=str(folder / "home"), TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"))
    started = time.perf_counter()
    flags = [] if prepack else ["--no-weight-prepack"]
    out = subprocess.run([sys.executable, __file__, "--child", "--dtype", dtype, "--steps", str(steps), *flags], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warm", type=int, default=2, help="warm processes after the cold one")
    parser.add_argument(
        "--no-weight-prepack", action="store_true",
        help="compile without inductor's mkldnn weight prepacking (whose tensors its graph cache cannot pickle)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    prepack = not args.no_weight_prepack
    if args.child:
        print(json.dumps(child(args.dtype, args.steps, prepack)))
        return
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        cold = measure(Path(folder), args.dtype, args.steps, prepack)
        print("cold", cold, flush=True)
        warm = []
        for _ in range(args.warm):
            warm.append(measure(Path(folder), args.dtype, args.steps, prepack))
            print("warm", warm[-1], flush=True)
    best = min(w["first_step_s"] for w in warm)
    report = {
        "dtype": args.dtype,
        "weight_prepack": prepack,
        "cold": cold,
        "warm": warm,
        "warm_over_cold_first_step": round(best / cold["first_step_s"], 3),
        "load_before": load,
        "load_after": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
