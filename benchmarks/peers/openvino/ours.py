"""restkv on the same exported prompts, with the same row fields as measure.py (restkv's own venv).

.venv/bin/python benchmarks/peers/openvino/ours.py --prompts prompts.jsonl \
    --settings full,snapkv@128,restkv@128 --threads 2 --out rows.jsonl

Each setting is ``full`` or ``<method spec>@<budget>`` (a method spec as ``restkv eval
--methods`` takes it, e.g. ``snapkv[window_size=32]@128``). Prompts are run through
the library's own ``prefill`` and greedy ``decode`` (the steps of ``greedy_decode``; fp32 weights
and cache, no chunking), the settings taking turns on each prompt. TTFT here is the prefill (which includes the
press's scoring and compression) plus the first token's argmax; decode ms/token is the mean
over the generated tokens after the first, as in measure.py; both in wall and in process CPU
time. Peak RSS is the process's so far.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from transformers import DynamicCache

from restkv.cache import cache_entries
from restkv.generation import decode, prefill
from restkv.models import load_model
from restkv.specs import MethodConfig, parse_method_spec


def parse_setting(text: str) -> MethodConfig:
    if text == "full":
        return MethodConfig.make("full")
    spec, sep, budget = text.rpartition("@")
    if not sep or not budget.isdigit():
        raise SystemExit(f"setting {text!r}: use full or <method>@<budget>, e.g. snapkv@128")
    name, params = parse_method_spec(spec)
    return MethodConfig.make(name, int(budget), **params)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--settings", default="full,snapkv@128,restkv@128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, help="override the prompts' max_new_tokens (latency runs)")
    parser.add_argument("--ignore-eos", action="store_true", help="decode exactly max_new_tokens (latency runs)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [s for s in args.settings.split(",") if s]
    configs = [parse_setting(s) for s in texts]
    prompts = [json.loads(line) for line in open(args.prompts) if line.strip()][: args.limit]
    for p in prompts:
        p["max_new_tokens"] = args.max_new_tokens or p["max_new_tokens"]
        p["stop_ids"] = [] if args.ignore_eos else p["eos_ids"]
    rss_before = peak_rss_mib()
    began = time.perf_counter()
    loaded = load_model(dtype="float32")
    load_s = time.perf_counter() - began
    rss_loaded = peak_rss_mib()
    model, tokenizer = loaded.model, loaded.tokenizer

    @torch.inference_mode()
    def run(prompt, config):
        """The library's prefill then greedy decode under the press (greedy_decode's steps,
        timed here in wall and process CPU time)."""
        ids = torch.tensor([prompt["input_ids"]])
        press, cache = config.press(), DynamicCache(config=model.config)
        start, start_cpu = time.perf_counter(), time.process_time()
        with press(model):
            logits = prefill(model, ids, cache, press.chunk_size)
            token = int(logits.argmax(-1)[0])  # the first token, as measure.py's first step
            prefill_s, prefill_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            kept = cache_entries(cache)
            began, began_cpu = time.perf_counter(), time.process_time()
            tokens, _ = decode(model, cache, logits, ids.shape[1], prompt["max_new_tokens"], set(prompt["stop_ids"]))
            steps = max(len(tokens) - 1, 1)
            decode_ms = 1000 * (time.perf_counter() - began) / steps
            decode_cpu_ms = 1000 * (time.process_time() - began_cpu) / steps
        assert tokens[0] == token
        return tokens, kept, prefill_s, prefill_cpu, decode_ms, decode_cpu_ms, time.perf_counter() - start

    short = {**prompts[0], "input_ids": prompts[0]["input_ids"][-256:], "max_new_tokens": 4}
    for config in configs:  # warm-up on a short cut of the first prompt, as measure.py
        for _ in range(args.warmup):
            run(short, config)
    with open(args.out, "a") as out:
        for prompt in prompts:
            for rep in range(args.repeats):
                for text, config in zip(texts, configs):
                    tokens, kept, prefill_s, prefill_cpu, decode_ms, decode_cpu_ms, wall = run(prompt, config)
                    eos = set(prompt["eos_ids"])
                    n = len(prompt["input_ids"])
                    out.write(json.dumps({
                        "engine": "restkv", "library": "restkv", "setting": text, "method": config.label, "budget": config.budget,
                        "precision": "fp32", "threads": args.threads, "repeat": rep,
                        "task": prompt["task"], "sample_id": prompt["sample_id"], "prediction_ids": tokens, "prefill_s": prefill_s,
                        "prediction": tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True),
                        "prompt_tokens": n, "generated_tokens": len(tokens), "kept_entries": kept,
                        "ttft_s": prefill_s, "prefill_tokens_per_s": n / prefill_s,
                        "decode_ms_per_token": decode_ms if len(tokens) > 1 else None,
                        "prefill_cpu_s": prefill_cpu, "decode_cpu_ms_per_token": decode_cpu_ms if len(tokens) > 1 else None,
                        "peak_rss_mib": peak_rss_mib(), "rss_before_load_mib": rss_before,
                        "rss_after_load_mib": rss_loaded, "load_s": load_s, "wall_s": wall,
                    }) + "\n")  # fmt: skip
                    out.flush()
    print(f"ours.py: {len(prompts)} prompts x {len(configs)} settings x {args.repeats} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
