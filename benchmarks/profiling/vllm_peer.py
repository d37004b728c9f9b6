"""vLLM's CPU build as a performance peer: decode ms/token at batch 1 and tokens/s at batch 8, the
restkv plugin inside vLLM against restkv's own decoding on transformers (eager and compiled), on
the same prompt ids.

One pass-key prompt of ``--prompt-tokens`` tokens (the embedded SmolLM2, chat template), sent
``--batch`` times at once (prefix caching off, so every copy is prefilled and decoded), each copy
decoding exactly ``--new-tokens`` tokens (no end token), fp32 weights and cache, ``--threads``
threads. Settings: the full cache and restkv at ``--budget``. Rounds alternate engines so a slow
spell of the shared machine hits both.

vLLM: one engine (the plugin evicting, ``{"method": "full"}`` per request for the full cache), stepped
by hand; a decode step is one in which every request of the batch already had its first token;
decode ms/token is the median of those steps' wall times and tokens/s is the batch over it.
restkv: :func:`restkv.generation.greedy_decode` on the batch (rows of the same prompt); compiled runs
go twice and the second is timed (the first compiles); ms/token is the loop's wall time per step.

    .venv-vllm/bin/python benchmarks/profiling/vllm_peer.py --ours-python .venv/bin/python \\
        [--prompt-tokens 2048] [--batches 1,8] [--budget 256] [--new-tokens 32] [--rounds 2] \\
        [--out benchmarks/results/vllm-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def prompt_ids(folder: str, length: int) -> list[int]:
    from transformers import AutoTokenizer

    from restkv.eval.tasks.passkey import passkey_samples

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def encode(text):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    (sample,) = passkey_samples(1, length, lambda t: len(tokenizer(encode(t), add_special_tokens=False)["input_ids"]), 0)
    return tokenizer(encode(sample.prompt), add_special_tokens=False)["input_ids"]


def vllm_engine(folder: str, args):
    from vllm import LLM

    return LLM(
        model=folder, dtype="float32", enforce_eager=True, enable_prefix_caching=False, block_size=32,
        max_model_len=args.prompt_tokens + args.new_tokens + 64, max_num_seqs=max(args.batches), seed=0,
        additional_config={"restkv": {"method": "restkv", "budget": args.budget}},
    )  # fmt: skip


def run_vllm(llm, ids: list[int], setting: dict, batch: int, args, tag: str) -> dict:
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True, extra_args={"restkv": setting})
    names = [f"{tag}-{i}" for i in range(batch)]
    began = time.perf_counter()
    for name in names:
        engine.add_request(name, {"prompt_token_ids": ids}, params)
    produced, decode_steps, tokens = dict.fromkeys(names, 0), [], {}
    first_token_s = None
    while engine.has_unfinished_requests():
        decoding = all(produced[n] > 0 for n in names)
        start = time.perf_counter()
        outputs = engine.step()
        wall = time.perf_counter() - start
        for out in outputs:
            produced[out.request_id] = len(out.outputs[0].token_ids)
            if out.finished:
                tokens[out.request_id] = list(out.outputs[0].token_ids)
        if decoding and outputs:
            decode_steps.append(wall)
        if first_token_s is None and all(produced[n] > 0 for n in names):
            first_token_s = time.perf_counter() - began
    ms = 1000 * statistics.median(decode_steps)
    return {"decode_ms_per_step": round(ms, 2), "tokens_per_s": round(1000 * batch / ms, 2), "decode_steps": len(decode_steps),
            "prefill_s": round(first_token_s, 2), "wall_s": round(time.perf_counter() - began, 2),
            "tokens": tokens[names[0]], "rows_agree": len({tuple(t) for t in tokens.values()}) == 1}  # fmt: skip


def ours_mode(request_file: str, out_file: str) -> None:
    """restkv on transformers (run with the main environment's Python): one row per run."""
    import torch
    from transformers import AutoModelForCausalLM

    from restkv import get_press
    from restkv.generation import greedy_decode

    request = json.loads(Path(request_file).read_text())
    torch.set_num_threads(request["threads"])
    model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32)
    rows = []
    for batch in request["batches"]:
        ids = torch.tensor([request["ids"]] * batch)
        for name, setting in request["settings"].items():
            setting = dict(setting)
            press = None if name == "full" else get_press(setting.pop("method"), **setting)
            for compile in (False, True):
                runs = 2 if compile else 1  # the first compiled run compiles
                for _ in range(runs):
                    began = time.perf_counter()
                    tokens, _, prefill_s, ms = greedy_decode(model, ids, press, request["new_tokens"], compile=compile)
                    wall = time.perf_counter() - began
                rows.append({"engine": f"restkv {'compiled' if compile else 'eager'}", "setting": name, "batch": batch,
                             "decode_ms_per_step": round(ms, 2), "tokens_per_s": round(1000 * batch / ms, 2),
                             "prefill_s": round(prefill_s, 2), "wall_s": round(wall, 2), "tokens": [int(t) for t in tokens]})  # fmt: skip
    Path(out_file).write_text(json.dumps(rows))


def table(rows: list[dict]) -> str:
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["batch"], r["setting"], r["engine"]), []).append(r)
    lines = ["| batch | setting | engine | decode ms/step (median of runs) | tokens/s | runs | prefill s | same tokens as vLLM |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (batch, setting, engine), runs in sorted(cells.items()):
        ms = statistics.median(r["decode_ms_per_step"] for r in runs)
        reference = cells.get((batch, setting, "vllm plugin"), [{}])[0].get("tokens")
        same = "-" if engine == "vllm plugin" or reference is None else f"{sum(r['tokens'] == reference for r in runs)}/{len(runs)}"
        lines.append(f"| {batch} | {setting} | {engine} | {ms:.1f} | {1000 * batch / ms:.1f} | {len(runs)} | "
                     f"{statistics.median(r['prefill_s'] for r in runs):.1f} | {same} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours-python", help="the main environment's Python (restkv on transformers); omit: vLLM alone")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm-peer"))
    parser.add_argument("--table", action="store_true", help="print the table of OUT/rows.jsonl and stop")
    args = parser.parse_args()
    rows_path = args.out / "rows.jsonl"
    if args.table:
        print(table([json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]))
        return
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")

    from restkv.models import DEFAULT_MODEL, load_model, restkv_home

    folder = restkv_home() / "models" / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        load_model(DEFAULT_MODEL)
    folder = str(folder)
    ids = prompt_ids(folder, args.prompt_tokens)
    settings = {"full": {"method": "full"}, f"restkv-{args.budget}": {"method": "restkv", "budget": args.budget}}
    args.out.mkdir(parents=True, exist_ok=True)
    llm = vllm_engine(folder, args)
    with open(rows_path, "a") as log:

        def record(row):
            row.update(prompt_tokens=len(ids), new_tokens=args.new_tokens, threads=args.threads,
                       load=round(os.getloadavg()[0], 2), time=time.strftime("%H:%M:%S"))  # fmt: skip
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), flush=True)

        for round_ in range(args.rounds):
            for batch in args.batches:
                for name, setting in settings.items():
                    row = run_vllm(llm, ids, setting, batch, args, f"r{round_}-b{batch}-{name}")
                    record({"engine": "vllm plugin", "setting": name, "batch": batch, "round": round_, **row})
            if args.ours_python:
                request, out = args.out / "ours_request.json", args.out / "ours_rows.json"
                request.write_text(json.dumps({"model": folder, "ids": ids, "batches": args.batches, "settings": settings,
                                               "new_tokens": args.new_tokens, "threads": args.threads}))  # fmt: skip
                env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
                subprocess.run([args.ours_python, __file__, "ours", str(request), str(out)], check=True, env=env)
                for row in json.loads(out.read_text()):
                    record({**row, "round": round_})
                request.unlink()
                out.unlink()
    print(table([json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ours":
        ours_mode(*sys.argv[2:4])
    else:
        main()
