"""Needles in real text far beyond a model's trained length: question-aware streaming with re-indexing.

Every run is one process (so its peak memory is its own): one needle, one length, one method.
The needles are the same at every length (same code, depth and essay start; only the haystack's
length changes), so a method's found rate at 128K or 256K can be set against the full cache's
at 4K on the same needles.

    python benchmarks/studies/long_context.py run --out benchmarks/results/long-context \\
        --lengths 32768 --needles 3 --methods "restkv,snapkv,streamingllm" --budget 1024 --chunk-size 4096
    python benchmarks/studies/long_context.py run --out ... --lengths 4096 --methods full      # the reference
    python benchmarks/studies/long_context.py report --out benchmarks/results/long-context
    python benchmarks/studies/long_context.py write --length 262144 --file haystack.txt   # for restkv generate

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
#: BBH-haystack prompts cycle through these tasks (questions short enough for the auto window)
BBH_TASKS = ("sports_understanding", "object_counting", "navigate")


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


def bbh_prompt(index: int, length: int, count_tokens):
    """BBH-haystack prompt ``index``: the first evaluated example of one of :data:`BBH_TASKS`."""
    from restkv.eval.tasks import bbh, bbh_haystack

    task = BBH_TASKS[index % len(BBH_TASKS)]
    base = bbh.load(task, bbh.prepare(), index // len(BBH_TASKS) + 1)[-1]
    return bbh_haystack.haystack_pair(base, length, count_tokens, random.Random(f"long-context-bbh-{index}").random())


def one(args) -> None:
    """One prompt at one length with one method; prints one JSON row."""
    import torch

    from restkv.eval.tasks import bbh
    from restkv.eval.tasks.base import token_counter
    from restkv.eval.tasks.niah import code_positions, niah_sample, score
    from restkv.generation import encode_prompt
    from restkv.models import load_model
    from restkv.press import get_press
    from restkv.specs import parse_method_spec
    from restkv.window import question_window

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype)
    count = token_counter(loaded)
    if args.task == "niah":
        code, depth, seed = needle(args.needle)
        sample = niah_sample(f"needle-{args.needle}", code, depth, seed, args.length, count, "essays")
        extra = {"depth": depth, "code": code}
    else:
        sample = bbh_prompt(args.needle, args.length, count)
        extra = {"bbh_task": sample.id.rsplit("-", 2)[0].removeprefix("bbh-"), "answers": sample.answers}
    ids = encode_prompt(loaded.tokenizer, sample.prompt, chat=loaded.chat, answer_prefix=sample.answer_prefix)
    name, params = parse_method_spec(args.spec)
    press = None if name == "full" else get_press(name, budget=args.budget, **params)
    window = None
    if press is not None and press.window_range is not None:
        window = question_window(
            loaded.tokenizer, sample.prompt, loaded.chat, sample.answer_prefix, *press.window_range
        )
    run = answer(loaded, ids, press, sample.max_new_tokens, window, args.chunk_size)
    row = {
        "model": args.model, "dtype": args.dtype, "task": args.task, "method": args.spec,
        "budget": None if press is None else args.budget, "length": args.length, "prompt_tokens": int(ids.shape[1]),
        "needle": args.needle, **extra, "prediction": run["text"], "kv_entries": run["kept"], "question_tokens": window,
        "prefill_s": round(run["prefill_s"], 1), "prefill_s_per_1k": round(1000 * run["prefill_s"] / ids.shape[1], 3),
        "compress_share": round(run["compress_s"] / run["prefill_s"], 4),
        "decode_ms_per_token": round(run["decode_ms"], 1),
    }  # fmt: skip
    if args.task == "niah":
        row["found"] = score(run["text"], sample)
        row["needle_kept"] = round(run["origins"].share(code_positions(loaded.tokenizer, sample, loaded.chat)), 4)
    else:
        reference_ids = encode_prompt(
            loaded.tokenizer, sample.meta["reference_prompt"], chat=loaded.chat, answer_prefix=sample.answer_prefix
        )
        reference = answer(loaded, reference_ids, None, sample.max_new_tokens, None, None)
        p, q = reference["first"], run["first"]
        row |= {
            "reference_prediction": reference["text"], "correct": bbh.score(run["text"], sample),
            "reference_correct": bbh.score(reference["text"], sample),
            "agree": float(first_line(run["text"]) == first_line(reference["text"])),
            "kl": round(float((p.exp() * (p - q)).sum()), 5),
        }  # fmt: skip
    row |= {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "wall_s": round(time.perf_counter() - start, 1), "threads": args.threads,
    }  # fmt: skip
    print(json.dumps(row))


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip().rstrip(".").lower()


def answer(loaded, ids, press, max_new_tokens: int, window, chunk_size) -> dict:
    """Greedy answer under ``press`` with what the study reads: the first answer token's
    log-probabilities, the prompt tokens each compressed layer kept, and the time spent
    compressing (the library's ``chunk_compress`` phase, :mod:`restkv.timing`: query projection,
    scoring, selection, gathering and re-indexing of each chunk). The full cache is prefilled in
    ``chunk_size`` pieces (the same result as one pass, without a whole-prompt attention matrix)."""
    import torch
    from transformers import DynamicCache

    from restkv.cache import cache_entries
    from restkv.generation import decode, eos_ids, prefill
    from restkv.origins import track_origins
    from restkv.press import KVPress
    from restkv.state import ensure_state
    from restkv.timing import record_phases

    press = press or KVPress(None)
    model, stop = loaded.model, eos_ids(loaded.tokenizer, loaded.model)
    cache = DynamicCache(config=model.config)
    origins = track_origins(cache)
    ensure_state(cache).window = window
    with torch.inference_mode(), press(model):
        with record_phases() as phases:
            t = time.perf_counter()
            question = window if press.question_aware and window is not None else 0
            logits = prefill(model, ids, cache, press.chunk_size or chunk_size, False, question)
            prefill_s = time.perf_counter() - t
        kept, first = cache_entries(cache), torch.log_softmax(logits[0].float(), -1)
        tokens, decode_ms = decode(model, cache, logits, ids.shape[1], max_new_tokens, stop)
    text = loaded.tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)
    return {"text": text, "first": first, "kept": kept, "origins": origins, "prefill_s": prefill_s,
            "decode_ms": decode_ms, "compress_s": phases.seconds["chunk_compress"]}  # fmt: skip


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


def key(row: dict) -> tuple:
    """What makes a run: rows from before the task and dtype were recorded are float32 needles."""
    return row.get("task", "niah"), row.get("dtype", "auto"), row["method"], row["length"], row["needle"]


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.exists():
        done = {key(r) for r in map(json.loads, rows_path.read_text().splitlines())}
    for length in args.lengths:
        for method in args.methods:
            spec = spec_of(method, args.budget, args.chunk_size)
            for index in range(args.first_needle, args.first_needle + args.needles):
                if (args.task, args.dtype, spec, length, index) in done:
                    continue
                cmd = [sys.executable, __file__, "one", "--model", args.model, "--spec", spec, "--length", str(length),
                       "--needle", str(index), "--budget", str(args.budget), "--threads", str(args.threads),
                       "--task", args.task, "--dtype", args.dtype, "--chunk-size", str(args.chunk_size)]  # fmt: skip
                result = subprocess.run(cmd, capture_output=True, text=True)
                if result.returncode != 0:
                    print(
                        f"{args.task} {spec} at {length}, prompt {index} failed:\n{result.stderr[-2000:]}",
                        file=sys.stderr,
                    )
                    continue
                row = json.loads(result.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")


STREAMED = "window_size=auto;chunk_size=4096;rerotate=True"


def label(method: str) -> str:
    """The method without the streaming parameters every compressing run shares."""
    short = method.replace(STREAMED + ";", "").replace(f"[{STREAMED}]", "")
    return short.replace("restkv[temporal=", "restkv[").replace(";pooling=", "/").replace(";kernel_size=", " k")


def cells(rows: list[dict]) -> dict[tuple, dict]:
    """One cell per (dtype, method, length): needle and BBH-haystack rows summarised together."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row.get("dtype", "auto"), row["method"], row["length"]), []).append(row)
    out = {}
    for cell, group in grouped.items():
        needles = [r for r in group if r.get("task", "niah") == "niah"]
        prompts = [r for r in group if r.get("task") == "bbh"]
        kept = [r["needle_kept"] for r in needles if "needle_kept" in r]
        share = [r["compress_share"] for r in group if "compress_share" in r]
        out[cell] = {
            "needles": len(needles), "found": sum(r["found"] for r in needles), "kept": mean(kept),
            "prompts": len(prompts), "agree": sum(r["agree"] for r in prompts), "kl": mean([r["kl"] for r in prompts]),
            "correct": sum(r["correct"] for r in prompts), "prefill": statistics.median(r["prefill_s_per_1k"] for r in group),
            "share": mean(share), "decode": statistics.median(r["decode_ms_per_token"] for r in group),
            "peak": max(r["peak_rss_mib"] for r in group), "wall": sum(r["wall_s"] for r in group),
        }  # fmt: skip
    return out


def mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def ratio(hits: float, count: int) -> str:
    return f"{hits:.0f}/{count}" if count else "-"


def quality(cell: dict) -> float:
    """The study's quality score, fixed before the runs: the mean of the needle found rate and
    the BBH-haystack agreement rate (each counted only where measured)."""
    rates = [cell["found"] / cell["needles"]] if cell["needles"] else []
    rates += [cell["agree"] / cell["prompts"]] if cell["prompts"] else []
    return statistics.mean(rates)


def report(args) -> None:
    out = Path(args.out)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    table = cells(rows)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [
        "| dtype | method | length | needles found | needle kept | BBH agree | BBH KL | BBH correct "
        "| prefill s/1K | compress share | decode ms/token | peak RSS MiB | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dtype, method, length), c in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        lines.append(
            f"| {'float32' if dtype == 'auto' else dtype} | {label(method)} | {length:,} "
            f"| {ratio(c['found'], c['needles'])} | {fmt(c['kept'], '.3f')} "
            f"| {ratio(c['agree'], c['prompts'])} | {fmt(c['kl'], '.3f')} "
            f"| {ratio(c['correct'], c['prompts'])} | {c['prefill']:.2f} "
            f"| {fmt(c['share'], '.3f')} | {c['decode']:.1f} | {c['peak']:,} | {c['wall']:,.0f} |"
        )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)
    pareto(table, out / "pareto.png")


def pareto(table: dict, path: Path) -> None:
    """Quality (:func:`quality`) against the share of prefill spent compressing, one panel per
    length, bfloat16 rows only; the Pareto front (no other point both cheaper and better) is
    joined. The share is a ratio within each run, so it survives a shared machine's noise, which
    the absolute prefill time (in the table) does not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({length for dtype, _, length in table if dtype == "bfloat16"})
    if not lengths:
        return
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 5), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        points = [
            (100 * (c["share"] or 0.0), quality(c), label(m))
            for (d, m, n), c in table.items()
            if d == "bfloat16" and n == length
        ]
        for i, (x, y, name) in enumerate(sorted(points)):
            ax.scatter(x, y, color="tab:red" if name.startswith("restkv") else "tab:gray")
            ax.annotate(name, (x, y), fontsize=6, xytext=(4, 4 + 7 * (i % 4)), textcoords="offset points")
        front, best = [], -1.0
        for x, y, _ in sorted(points):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front), color="tab:blue", lw=1)
        ax.set(title=f"{length // 1024}K tokens", xlabel="% of prefill spent compressing", ylabel="quality")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


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
    o.add_argument("--chunk-size", type=int, default=4096, help="prefill chunks of the full cache")
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
    for command in (o, r):
        command.add_argument("--task", choices=("niah", "bbh"), default="niah", help="needles, or BBH-haystack prompts")
        command.add_argument("--dtype", default="auto", help="model dtype (auto: as saved; the GGUF loads as float32)")
    args = parser.parse_args()
    {"one": one, "run": run, "write": write, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
