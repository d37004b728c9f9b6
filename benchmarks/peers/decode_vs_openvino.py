"""Decode ms/token of ours (eager loop, static buffers compiled) beside OpenVINO GenAI, interleaved.

.venv/bin/python benchmarks/peers/decode_vs_openvino.py --lengths 1024,8192,4096 --decode-tokens 32 --rounds 2 \\
    --peer-python /work/wt/openvino/benchmarks/peers/openvino/.venv/bin/python \\
    --peer-script /work/wt/openvino/benchmarks/peers/openvino/measure.py --out benchmarks/results/decode-compiled

One passkey prompt per length (the embedded SmolLM2, chat template), the same token ids for
both engines, fp32 weights and KV cache, ``--threads`` threads each. Each round goes through the
lengths; at each length our four runs (full and SnapKV-128, eager and compiled) and then one
peer process (full and ``evict128``) take turns, so a slow spell of the shared machine hits
every engine alike. Both sides decode exactly ``--decode-tokens`` tokens (no end token).

Ours: one full prefill per length, recorded, and SnapKV-128 derived from it (the evaluation
engine's prefill-once path), so prefill is timed once per length. ``eager`` is
:func:`restkv.generation.decode` on transformers' cache under the press hooks, ``compiled`` the
static-buffer step through ``torch.compile``; the first compiled step of a buffer size compiles
(``first_step_s``). Per-step wall and process CPU time are recorded; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def prompts(loaded, lengths, seed=0):
    from restkv.eval.tasks import TaskOptions, build
    from restkv.generation import encode_prompt

    out = {}
    for length in lengths:
        for task, samples, _ in build("passkey", loaded, TaskOptions(samples=1, length=length, seed=seed)):
            s = samples[0]
            ids = encode_prompt(loaded.tokenizer, s.prompt, chat=loaded.chat, answer_prefix=s.answer_prefix)
            out[length] = {"task": task, "sample_id": s.id, "input_ids": ids[0].tolist()}
    return out


@torch.inference_mode()
def ours(model, cache, logits, press, steps: int, compile: bool) -> dict:
    """Decode ``steps`` tokens greedily (no end token) from a fork of ``cache``; per-step times."""
    from restkv.cache import fork_cache
    from restkv.generation import forward_step
    from restkv.static_decode import StaticDecoder

    cache = fork_cache(cache)
    walls, cpus, tokens = [], [], []
    token = logits.argmax(-1)[:, None]
    began = time.perf_counter()
    first = None
    with press(model):
        if compile:
            decoder = StaticDecoder(model, cache, steps + 1, press, compile=True)
            step_fn = decoder.step
        else:
            start = int(cache.get_seq_length())

            def step_fn(ids, _pos=[start]):  # noqa: B006 (a counter)
                out = forward_step(model, cache, ids, _pos[0])[:, -1]
                _pos[0] += 1
                return out

        for _ in range(steps):
            w, c = time.perf_counter(), time.process_time()
            logits = step_fn(token)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
            token = logits.argmax(-1)[:, None]
            tokens.append(int(token[0, 0]))
            if first is None:
                first = time.perf_counter() - began  # building the buffers (compiling) and the first step
    return {"first_step_s": first, "decode_ms_median": 1000 * statistics.median(walls[1:]),
            "decode_ms_mean": 1000 * statistics.mean(walls[1:]), "decode_cpu_ms_median": 1000 * statistics.median(cpus[1:]),
            "tokens": tokens}  # fmt: skip


def peer(args, prompt: dict, length: int, workdir: Path, round: int) -> list[dict]:
    path = workdir / f"prompt-{length}.jsonl"
    row = {**prompt, "max_new_tokens": args.decode_tokens, "eos_ids": []}
    path.write_text(json.dumps(row) + "\n")
    settings = f"evict{args.budget}" if args.compressed_only else f"full,evict{args.budget}"
    out = workdir / f"peer-{length}-{round}.jsonl"
    command = [args.peer_python, args.peer_script, "--prompts", str(path), "--settings", settings,
               "--threads", str(args.threads), "--precision", "fp32", "--max-new-tokens", str(args.decode_tokens),
               "--ignore-eos", "--warmup", "0", "--out", str(out)]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"peer failed at {length}: {done.stderr[-2000:]}")
        return []
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for r in rows:
        r["process_wall_s"] = time.perf_counter() - began
    return rows


def summarize(rows_path: Path) -> str:
    """A markdown table of median decode ms/token (wall, and process CPU) per engine, setting, length."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    cells: dict = {}
    for r in rows:
        if r.get("kind") == "prefill":
            continue
        if r["engine"] == "openvino":
            key = ("openvino", r["setting"], r["length"])
            wall, cpu = r["decode_ms_median"], r["decode_cpu_ms_per_token"]
        else:
            key = (f"restkv {r['path']}", r["setting"], r["length"])
            wall, cpu = r["decode_ms_median"], r["decode_cpu_ms_median"]
        cells.setdefault(key, []).append((wall, cpu, r.get("first_step_s")))
    lines = ["| engine | setting | length | decode ms/token (median of runs) | CPU ms/token | runs | first step s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (engine, setting, length), values in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        walls, cpus = [v[0] for v in values], [v[1] for v in values if v[1] is not None]
        firsts = ", ".join(f"{v[2]:.1f}" for v in values if v[2] is not None) or "-"
        lines.append(f"| {engine} | {setting} | {length} | {statistics.median(walls):.0f} | "
                     f"{statistics.median(cpus):.0f} | {len(values)} | {firsts} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,8192,4096")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--compressed-only", action="store_true",
                        help="measure only the budget's caches (ours and the peer's), not the full caches")  # fmt: skip
    parser.add_argument("--peer-python", help="the OpenVINO peer's interpreter (omit: ours alone)")
    parser.add_argument("--peer-script", help="the peer's measure.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--summarize", action="store_true", help="print the table of OUT/rows.jsonl and stop")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.out / "rows.jsonl"))
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from restkv.eval.engine import Engine
    from restkv.models import load_model
    from restkv.press import KVPress
    from restkv.specs import MethodConfig

    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    log = open(rows_path, "a")

    def record(row):
        row.update(
            threads=args.threads, decode_tokens=args.decode_tokens, load=uptime(), time=time.strftime("%H:%M:%S")
        )
        log.write(json.dumps(row) + "\n")
        log.flush()
        print({k: v for k, v in row.items() if k not in ("tokens", "prediction_ids", "prediction")}, flush=True)

    began = time.perf_counter()
    print("start", uptime(), flush=True)
    loaded = load_model()
    model = loaded.model
    lengths = [int(x) for x in args.lengths.split(",")]
    texts = prompts(loaded, lengths)
    snap = MethodConfig.make("snapkv", args.budget)
    engine = Engine(model, [MethodConfig.make("full"), snap])
    workdir = Path(tempfile.mkdtemp(prefix="decode-vs-ov-"))
    prefilled = {}
    for round in range(args.rounds):
        for length in lengths:
            prompt = texts[length]
            if length not in prefilled:
                ids = torch.tensor([prompt["input_ids"]])
                record_ = engine.prefill(ids)
                compressed, _, compress_s = engine.compressed_cache(record_, snap)
                prefilled[length] = {
                    "full": (record_.cache, record_.last_logits, KVPress(None)),
                    f"snapkv{args.budget}": (compressed, record_.last_logits, snap.press()),
                }
                if args.compressed_only:
                    del prefilled[length]["full"]
                record({"engine": "restkv", "kind": "prefill", "length": length, "prompt_tokens": ids.shape[1],
                        "prefill_s": record_.prefill_s, "compress_s": compress_s})  # fmt: skip
            for setting, (cache, logits, press) in prefilled[length].items():
                for compile in (False, True):
                    result = ours(model, cache, logits, press, args.decode_tokens, compile)
                    record({"engine": "restkv", "path": "compiled" if compile else "eager", "setting": setting,
                            "length": length, "round": round, **result})  # fmt: skip
            if args.peer_python:
                for row in peer(args, prompt, length, workdir, round):
                    row.update(engine="openvino", length=length, round=round)
                    record(row)
    print(f"done in {time.perf_counter() - began:.0f} s", uptime(), flush=True)


if __name__ == "__main__":
    main()
