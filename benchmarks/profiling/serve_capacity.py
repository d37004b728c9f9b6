"""How many concurrent long requests a fixed paged-cache pool holds, with and without eviction, and
the throughput at that equal memory.

transformers' continuous batching (the engine ``restkv serve`` runs on) with a pool of exactly
``--blocks`` blocks of ``--page-size`` tokens, the embedded SmolLM2. ``--requests`` prompts of
``--prompt-tokens`` tokens each are submitted at once, each asking ``--new-tokens`` greedy tokens.
Without eviction (``full``) a request holds ``ceil((prompt + generated) / page)`` blocks to the
end; with ReST-KV at ``--budget`` it holds ``ceil((budget + generated) / page)`` blocks once its
prefill is done. Repeats run interleaved (full, restkv, full, restkv, ...).

Measured per run: the peak number of requests decoding at the same time (from the scheduler, after
every batch), re-prefills (requests the scheduler had to throw out and prefill again because the
pool ran dry), wall time and generated tokens per second.

    .venv/bin/python benchmarks/profiling/serve_capacity.py [--requests 8] [--prompt-tokens 1024] [--blocks 320]
        [--budget 256] [--new-tokens 32] [--repeats 1] [--out benchmarks/results/serve-capacity]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

from transformers import GenerationConfig

from restkv import get_press
from restkv.models import load_model
from restkv.serve.paged import PagedEviction
from restkv.serve.server import continuous_batching_config


def prompts(tokenizer, count: int, length: int) -> list[list[int]]:
    """``count`` different prompts of exactly ``length`` tokens."""
    out = []
    for r in range(count):
        text = " ".join(f"Record {r}-{i}: shelf {i * 7 % 13} holds a {('red', 'blue', 'green')[i % 3]} box." for i in range(length))
        out.append(tokenizer(text)["input_ids"][:length])
    return out


def run_once(model, press, ids: list[list[int]], args) -> dict:
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1)
    config = continuous_batching_config(args.page_size, args.blocks, args.max_batch_tokens)
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=config)
    eviction = PagedEviction(model, press)
    eviction.attach(manager)
    manager.start()
    start = time.perf_counter()
    try:
        rids = [manager.add_request(x, max_new_tokens=args.new_tokens) for x in ids]
        outputs = [manager.get_result(request_id=r, timeout=args.timeout) for r in rids]
    finally:
        wall = time.perf_counter() - start
        snap = eviction.snapshot()
        manager.stop(block=True, timeout=30)
        eviction.detach()
    if any(o is None or o.error for o in outputs):
        raise RuntimeError("a request failed or timed out")
    generated = sum(len(o.generated_tokens) for o in outputs)
    prefills = len(snap["requests"])
    return {
        "method": "full" if press.scorer is None else press.name,
        "wall_s": round(wall, 2),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / wall, 3),
        "peak_decoding": snap["peak_decoding"],
        "prefills": prefills,
        "re_prefills": prefills - len(ids),
        "pool_blocks": snap["total_blocks"],
        "blocks_after_prefill": sorted({r["blocks_after"] for r in snap["requests"]}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=320)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve-capacity"))
    args = parser.parse_args()
    loaded = load_model()
    ids = prompts(loaded.tokenizer, args.requests, args.prompt_tokens)
    presses = [get_press("full"), get_press("restkv", budget=args.budget)]
    page = args.page_size
    full_blocks = math.ceil((args.prompt_tokens + args.new_tokens) / page)
    kept_blocks = math.ceil((args.budget + args.new_tokens) / page)
    prefill_blocks = math.ceil(args.prompt_tokens / page)
    planned = {
        # what fits at once if every request ran to the end; with eviction one more prefill must fit beside them
        "full": args.blocks // full_blocks,
        "restkv": (args.blocks - prefill_blocks) // kept_blocks,
    }
    runs = []
    for repeat in range(args.repeats):
        for press in presses:  # interleaved: full, restkv, full, restkv, ...
            load = os.getloadavg()[0]
            row = run_once(loaded.model, press, ids, args)
            row.update(repeat=repeat, load_before=round(load, 2))
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for method in ("full", "restkv"):
        rows = [r for r in runs if r["method"] == method]
        summary[method] = {
            "peak_decoding": max(r["peak_decoding"] for r in rows),
            "planned_concurrent": planned[method],
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
            "median_wall_s": statistics.median(r["wall_s"] for r in rows),
            "re_prefills": [r["re_prefills"] for r in rows],
        }
    summary["concurrency_ratio"] = summary["restkv"]["peak_decoding"] / summary["full"]["peak_decoding"]
    summary["throughput_ratio"] = summary["restkv"]["median_tokens_per_s"] / summary["full"]["median_tokens_per_s"]
    out = {"settings": vars(args) | {"out": str(args.out)}, "runs": runs, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
