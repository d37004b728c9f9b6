"""Needles in real text far beyond a model's trained length: question-aware streaming with re-indexing.

Every run is one process (so its peak memory is its own): one needle, one length, one method.
The needles are the same at every length (same code, depth and essay start; only the haystack's
length changes), so a method's found rate at 128K or 256K can be set against the full cache's
at 4K on the same needles.

    python benchmarks/long_context.py run --out benchmarks/results/long-context \\
        --lengths 32768 --needles 3 --methods "restkv,snapkv,streamingllm" --budget 1024 --chunk-size 4096
    python benchmarks/long_context.py run --out ... --lengths 4096 --methods full      # the reference
    python benchmarks/long_context.py report --out benchmarks/results/long-context
    python benchmarks/long_context.py write --length 262144 --file haystack.txt   # for restkv generate

Compressing methods run with ``chunk_size``, ``window_size="auto"`` (the question probes every
chunk) and ``rerotate=True`` added to their own parameters. Rows go to ``rows.jsonl``; a run that
is already there is skipped, so the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEPTHS = (0.25, 0.5, 0.75)
MODEL = "gemma3-270m"


def needle(index: int) -> tuple[str, float, float]:
    """Code, depth and essay seed of needle ``index`` (the same at every length)."""
    rng = random.Random(f"long-context-needle-{index}")
    return str(rng.randint(1_000_000, 9_999_999)), DEPTHS[index % len(DEPTHS)], rng.random()


def spec_of(method: str, budget: int, chunk_size: int) -> str:
    """The method as run: streaming, question-aware and re-indexed for every compressing method."""
    if method == "full":
        return "full"
    from restkv.specs import parse_method_spec

    name, params = parse_method_spec(method)
    params = {"window_size": "auto", "chunk_size": chunk_size, "rerotate": True, **params}
    return f"{name}[{';'.join(f'{k}={v}' for k, v in params.items())}]"


def one(args) -> None:
    """One needle at one length with one method; prints one JSON row."""
    import torch

    from restkv.eval.tasks.base import token_counter
    from restkv.eval.tasks.niah import niah_sample, score
    from restkv.generate import encode_prompt, eos_ids, greedy_decode
    from restkv.models import load_model
    from restkv.press import get_press
    from restkv.specs import parse_method_spec
    from restkv.window import question_window

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(args.model)
    code, depth, seed = needle(args.needle)
    sample = niah_sample(f"needle-{args.needle}", code, depth, seed, args.length, token_counter(loaded), "essays")
    ids = encode_prompt(loaded.tokenizer, sample.prompt, chat=loaded.chat, answer_prefix=sample.answer_prefix)
    name, params = parse_method_spec(args.spec)
    press = None if name == "full" else get_press(name, budget=args.budget, **params)
    window = None
    if press is not None and press.window_range is not None:
        window = question_window(
            loaded.tokenizer, sample.prompt, loaded.chat, sample.answer_prefix, *press.window_range
        )
    stop = eos_ids(loaded.tokenizer, loaded.model)
    tokens, kept, prefill_s, decode_ms = greedy_decode(loaded.model, ids, press, sample.max_new_tokens, stop, window)
    text = loaded.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)
    row = {
        "model": args.model, "method": args.spec, "budget": None if press is None else args.budget,
        "length": args.length, "prompt_tokens": int(ids.shape[1]), "needle": args.needle, "depth": depth,
        "code": code, "prediction": text, "found": score(text, sample), "kv_entries": kept,
        "question_tokens": window, "prefill_s": round(prefill_s, 1),
        "prefill_s_per_1k": round(1000 * prefill_s / ids.shape[1], 3), "decode_ms_per_token": round(decode_ms, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "wall_s": round(time.perf_counter() - start, 1), "threads": args.threads,
    }  # fmt: skip
    print(json.dumps(row))


def write(args) -> None:
    """A needle's haystack as a text file for ``restkv generate --prompt-file`` (the question is
    the command's own argument: "What is the secret code for the vault? Answer with the code only.")."""
    from restkv.eval.tasks.base import token_counter
    from restkv.eval.tasks.niah import niah_sample
    from restkv.models import load_model

    loaded = load_model(args.model)
    code, depth, seed = needle(args.needle)
    sample = niah_sample(f"needle-{args.needle}", code, depth, seed, args.length, token_counter(loaded), "essays")
    context = sample.prompt.rsplit("\n\n", 1)[0]
    Path(args.file).write_text(context)
    print(json.dumps({"file": args.file, "needle": args.needle, "code": code, "depth": depth, "chars": len(context)}))


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        done = {(r["method"], r["length"], r["needle"]) for r in map(json.loads, rows_path.read_text().splitlines())}
    for length in args.lengths:
        for method in args.methods:
            spec = spec_of(method, args.budget, args.chunk_size)
            for index in range(args.first_needle, args.first_needle + args.needles):
                if (spec, length, index) in done:
                    continue
                cmd = [sys.executable, __file__, "one", "--model", args.model, "--spec", spec, "--length", str(length),
                       "--needle", str(index), "--budget", str(args.budget), "--threads", str(args.threads)]  # fmt: skip
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"{spec} at {length}, needle {index} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(result.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def report(args) -> None:
    out = Path(args.out)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["method"], row["length"]), []).append(row)
    lines = [
        "| method | length | needles | found | prefill s per 1K tokens | decode ms/token | peak RSS MiB | wall s (all runs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, length), group in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        found = sum(r["found"] for r in group)
        lines.append(
            f"| {method} | {length:,} | {len(group)} | {found:.0f}/{len(group)} "
            f"| {statistics.median(r['prefill_s_per_1k'] for r in group):.2f} "
            f"| {statistics.median(r['decode_ms_per_token'] for r in group):.1f} "
            f"| {max(r['peak_rss_mib'] for r in group):,} | {sum(r['wall_s'] for r in group):,.0f} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("one")
    o.add_argument("--model", default=MODEL)
    o.add_argument("--spec", required=True)
    o.add_argument("--length", type=int, required=True)
    o.add_argument("--needle", type=int, required=True)
    o.add_argument("--budget", type=int, default=1024)
    o.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--model", default=MODEL)
    r.add_argument("--out", required=True)
    r.add_argument("--lengths", type=lambda t: [int(x) for x in t.split(",")], required=True)
    r.add_argument("--methods", type=lambda t: [x for x in t.split(",") if x], required=True)
    r.add_argument("--needles", type=int, default=3)
    r.add_argument("--first-needle", type=int, default=0)
    r.add_argument("--budget", type=int, default=1024)
    r.add_argument("--chunk-size", type=int, default=4096)
    r.add_argument("--threads", type=int, default=2)
    w = sub.add_parser("write")
    w.add_argument("--model", default=MODEL)
    w.add_argument("--length", type=int, required=True)
    w.add_argument("--needle", type=int, default=0)
    w.add_argument("--file", required=True)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    {"one": one, "run": run, "write": write, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
