"""Reduced precision for decoding: fp32 against bf16 weights+KV and quanto int8 weights, on this CPU.

.venv/bin/python benchmarks/profiling/decode_precision.py --prompts 2 --decode-tokens 32 --rounds 2 \\
    --out benchmarks/results/decode-compiled/precision.jsonl

Each variant decodes the same pass-key prompts (the embedded SmolLM2, SnapKV at budget 128), in
the eager loop and compiled (``compile=True``), the variants taking turns within each round;
each compiled variant first decodes once untimed, which compiles it (that time is recorded as
``first_call_s``). A variant that cannot compile is reported and timed eagerly only. Quality: the KL divergence
from fp32 of the next-token distributions over the fp32 greedy answer, teacher-forced with the
full cache (the precision's own cost, without eviction).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch


def variants(model):
    out = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    try:
        from optimum.quanto import freeze, qint8, quantize

        q = copy.deepcopy(model)
        quantize(q, weights=qint8)
        freeze(q)
        out["int8-quanto"] = q
    except Exception as err:  # report, do not hide
        print(f"quanto int8 unavailable: {err}")
    return out


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from restkv.eval.tasks import TaskOptions, build
    from restkv.generation import encode_prompt, greedy_decode
    from restkv.models import load_model
    from restkv.press import get_press

    loaded = load_model()
    models = variants(loaded.model)
    samples = [s for _, group, _ in build("passkey", loaded, TaskOptions(samples=args.prompts)) for s in group]
    prompts = [
        encode_prompt(loaded.tokenizer, s.prompt, chat=loaded.chat, answer_prefix=s.answer_prefix) for s in samples
    ]
    press = get_press("snapkv", budget=128)
    out = open(args.out, "a")
    paths = {}
    for name, model in models.items():
        paths[(name, "eager")] = (model, False)
        start = time.perf_counter()
        try:  # compiles this variant's step; a failure is a result, not a crash
            greedy_decode(model, prompts[0], press, 3, compile=True)
        except Exception as err:
            print(f"{name} does not compile: {type(err).__name__}: {str(err)[:300]}", flush=True)
            out.write(json.dumps({"variant": name, "path": "compiled", "error": f"{type(err).__name__}: {err}"[:1000]}) + "\n")
            continue
        first = time.perf_counter() - start
        out.write(json.dumps({"variant": name, "path": "compiled", "first_call_s": first}) + "\n")
        paths[(name, "compiled")] = (model, True)
    times = {key: [] for key in paths}
    answers = {}
    for round in range(args.rounds):
        for i, ids in enumerate(prompts):
            for (name, path), (model, compiled) in paths.items():
                tokens, _, prefill_s, ms = greedy_decode(model, ids, press, args.decode_tokens, compile=compiled)
                times[(name, path)].append(ms)
                if name == "fp32" and path == "eager":
                    answers[i] = tokens
                row = {"variant": name, "path": path, "prompt": i, "round": round, "decode_ms": ms,
                       "prefill_s": prefill_s, "tokens": tokens,
                       "load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}  # fmt: skip
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(row, flush=True)
    for i, ids in enumerate(prompts):  # quality: teacher-forced on the fp32 answer, full cache
        full = torch.cat([ids, torch.tensor([answers[i]])], dim=1)
        n = ids.shape[1]
        ref = torch.log_softmax(models["fp32"](full).logits[0, n - 1 : -1].float(), -1)
        for name, model in models.items():
            logp = torch.log_softmax(model(full).logits[0, n - 1 : -1].float(), -1)
            kl = float((ref.exp() * (ref - logp)).sum(-1).mean())
            agree = float((logp.argmax(-1) == ref.argmax(-1)).float().mean())
            row = {"variant": name, "prompt": i, "kl_to_fp32": kl, "top1_agreement": agree, "time": time.strftime("%X")}
            out.write(json.dumps(row) + "\n")
            print(row, flush=True)
    print({f"{name} {path}": statistics.median(t) for (name, path), t in times.items()})


if __name__ == "__main__":
    main()
