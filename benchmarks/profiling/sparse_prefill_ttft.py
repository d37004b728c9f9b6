"""Time to first token, pass-key accuracy and kept sets, dense prefill against ``sparse_prefill`` (issue 37).

For each length, ``--samples`` pass-key prompts (the built-in task: a five-digit key at a random
depth in repeated noise) are answered with ReST-KV at ``--budget``, one-pass prefill, dense and
each sparse mode (``--modes``) interleaved prompt by prompt. Time to first token is the prefill's
wall time (the prompt's forward and the compression; ``generate_with_stats``'s ``prefill_s``).
One warm-up prompt per length runs first in the sparse modes and is not counted (FlexAttention
compiles once per padded length; dense SDPA compiles nothing). A row per prompt goes to ``rows.jsonl`` as it finishes, and a rerun skips the rows
already there. With ``--kept-sets`` the entries each layer keeps (from a second, untimed prefill
with origin tracking) are saved under ``kept/``, and a sparse row records the share of dense
prefill's kept entries it did not keep (per layer and KV head, averaged).

    .venv/bin/python benchmarks/profiling/sparse_prefill_ttft.py --out benchmarks/results/sparse-prefill
        [--lengths 4096,8192,16384] [--samples 6] [--budget 256] [--modes trishape,xattention,xattention:0.9,vertical_slash]
        [--local 1024] [--threshold 0.9] [--stride 8]
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
from transformers import DynamicCache

from restkv import get_press
from restkv.eval.intervals import bootstrap_mean, wilson
from restkv.eval.tasks.base import token_counter
from restkv.eval.tasks.passkey import passkey_samples, score
from restkv.generation import encode_prompt, generate_with_stats, prefill
from restkv.models import load_model
from restkv.origins import track_origins


def presses(args) -> dict:
    options = {
        "trishape": {"sparse_local": args.local},
        "xattention": {"sparse_threshold": args.threshold, "sparse_stride": args.stride},
        "vertical_slash": {"sparse_threshold": args.threshold},
    }
    out = {"dense": get_press("restkv", budget=args.budget)}
    for mode in args.modes.split(","):
        pattern, _, threshold = mode.partition(":")  # xattention:0.9 sets its own threshold
        settings = {**options[pattern], **({"sparse_threshold": float(threshold)} if threshold else {})}
        out[mode] = get_press("restkv", budget=args.budget, sparse_prefill=pattern, **settings)
    return out


def kept_sets(model, tokenizer, prompt: str, press) -> dict[int, torch.Tensor]:
    """Per compressed layer, the prompt tokens ``[H_kv, kept]`` (sorted) that ``press`` keeps, from
    a second, untimed prefill of the same ids with origin tracking on."""
    cache = DynamicCache(config=model.config)
    origins = track_origins(cache)
    with torch.inference_mode(), press(model):
        prefill(model, encode_prompt(tokenizer, prompt).to(model.device), cache)
    return {index: kept[0].sort(-1).values for index, kept in origins.kept.items()}


def missed_share(dense: dict, sparse: dict) -> float:
    """The share of dense prefill's kept entries that sparse prefill did not keep."""
    shares = []
    for layer, ours in dense.items():
        theirs = sparse[layer]
        for head in range(ours.shape[0]):
            shared = torch.isin(ours[head], theirs[head]).sum().item()
            shares.append(1 - shared / ours.shape[1])
    return sum(shares) / len(shares)


def summarize(rows: list[dict]) -> list[dict]:
    table = []
    modes = sorted({r["mode"] for r in rows}, key=lambda m: (m != "dense", m))
    for length in sorted({r["length"] for r in rows}):
        for mode in modes:
            cell = [r for r in rows if r["length"] == length and r["mode"] == mode]
            if not cell:
                continue
            ttft = bootstrap_mean([r["prefill_s"] for r in cell])
            found = wilson(sum(r["score"] == 1.0 for r in cell), len(cell))
            entry = {"length": length, "mode": mode, "n": len(cell), "ttft_s": round(ttft.value, 2),
                     "ttft_95": [round(ttft.low, 2), round(ttft.high, 2)], "found": round(found.value, 3),
                     "found_95": [round(found.low, 3), round(found.high, 3)]}  # fmt: skip
            missed = [r["kept_missed"] for r in cell if r.get("kept_missed") is not None]
            if missed:
                share = bootstrap_mean(missed)
                entry.update(kept_missed=round(share.value, 3), kept_missed_95=[round(share.low, 3), round(share.high, 3)])
            table.append(entry)
        pairs = {}
        for r in rows:
            if r["length"] == length:
                pairs.setdefault(r["sample"], {})[r["mode"]] = r["prefill_s"]
        for mode in modes[1:]:
            ratios = [p[mode] / p["dense"] for p in pairs.values() if mode in p and "dense" in p]
            if ratios:
                mean = bootstrap_mean(ratios)
                table.append({"length": length, "mode": f"{mode} / dense (paired)", "n": len(ratios),
                              "mean_ratio": round(mean.value, 3), "mean_ratio_95": [round(mean.low, 3), round(mean.high, 3)],
                              "median_ratio": round(statistics.median(ratios), 3)})  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--modes", default="trishape", help="sparse modes, comma-separated")
    parser.add_argument("--local", type=int, default=1024)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="as restkv's --dtype (gemma3-270m: bfloat16)")
    parser.add_argument("--kept-sets", action="store_true", help="record kept sets (one more prefill per row)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    done = {(r["length"], r["sample"], r["mode"]) for r in rows}
    loaded = load_model(args.model, attn="sdpa", dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    count = token_counter(loaded)
    if args.kept_sets:
        (args.out / "kept").mkdir(exist_ok=True)
    started, load = time.perf_counter(), os.getloadavg()
    for length in (int(x) for x in args.lengths.split(",")):
        samples = passkey_samples(args.samples + 1, length, count, seed=37)
        warmup, samples = samples[0], samples[1:]
        warm = False
        for i, sample in enumerate(samples):
            for mode, press in presses(args).items():
                if (length, i, mode) in done:
                    continue
                if not warm:  # compile flex for this length, uncounted (dense SDPA compiles nothing)
                    for name, each in presses(args).items():
                        if name != "dense":
                            generate_with_stats(model, tokenizer, warmup.prompt, each, max_new_tokens=2)
                    warm = True
                result = generate_with_stats(
                    model, tokenizer, sample.prompt, press, max_new_tokens=sample.max_new_tokens
                )
                missed = None
                if args.kept_sets:
                    kept = kept_sets(model, tokenizer, sample.prompt, press)
                    torch.save(kept, args.out / "kept" / f"{length}-{i}-{mode}.pt")
                    dense_kept = args.out / "kept" / f"{length}-{i}-dense.pt"
                    if mode != "dense" and dense_kept.exists():
                        missed = round(missed_share(torch.load(dense_kept), kept), 4)
                row = {"length": length, "sample": i, "mode": mode, "tokens": result.prompt_tokens,
                       "prefill_s": round(result.prefill_s, 3), "answer": result.text.strip(),
                       "score": score(result.text, sample), "kept_missed": missed,
                       "load": os.getloadavg()[0]}  # fmt: skip
                rows.append(row)
                with path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    report = {
        "table": summarize(rows),
        "wall_s_this_run": round(time.perf_counter() - started, 1),
        "load_start": load,
        "load_end": os.getloadavg(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["table"], indent=1))


if __name__ == "__main__":
    main()
