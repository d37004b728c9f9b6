"""Run NVIDIA kvpress presses on exported prompts, with restkv's decoding loop and fidelity measure.

restkv's loop and metrics (``src/restkv/decoding.py``, ``src/restkv/eval/metrics.py``) are loaded by file path,
as they need only torch and the standard library.

Runs in kvpress's own environment (kvpress 0.5.x needs transformers < 5.3):

    /tmp/kvpress-venv/bin/python benchmarks/peers/run_kvpress.py prompts.jsonl \
        --model-dir ~/.cache/restkv/models/smollm2-135m-instruct --budgets 128,256 --out kvpress_rows.jsonl

For each prompt: the full cache's greedy answer is the reference; each press compresses the
prefill to exactly ``budget`` entries per head (kvpress keeps ``int(n * (1 - ratio))``, so the
ratio is set per prompt), then greedy decoding with explicit positions, as restkv's engine does,
and teacher forcing of the reference answer for the KL divergence. A press that raises is
recorded with its error instead of a prediction.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from kvpress import (
    ExpectedAttentionPress,
    KnormPress,
    ObservedAttentionPress,
    PyramidKVPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache


def _load_restkv(relative: str, name: str):
    """A restkv module loaded by file path (``relative`` under ``src/restkv``): this environment
    has kvpress's transformers, not restkv installed, and the modules loaded so import only torch
    and the standard library."""
    here = Path(__file__).resolve().parent
    found = next((d / "src" / "restkv" / relative for d in (here, *here.parents)
                  if (d / "src" / "restkv" / relative).is_file()), None)  # fmt: skip
    if found is None:
        raise SystemExit(f"run_kvpress: no src/restkv/{relative} above {here}")
    spec = importlib.util.spec_from_file_location(name, found)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


decoding = _load_restkv("decoding.py", "restkv_decoding")  # the greedy loop and its stop rule
metrics = _load_restkv("eval/metrics.py", "restkv_metrics")  # KL and top-1 agreement

PRESSES = {
    "SnapKVPress": (lambda r: SnapKVPress(compression_ratio=r, window_size=32), "sdpa"),
    "StreamingLLMPress": (lambda r: StreamingLLMPress(compression_ratio=r), "sdpa"),
    "TOVAPress": (lambda r: TOVAPress(compression_ratio=r), "sdpa"),
    "KnormPress": (lambda r: KnormPress(compression_ratio=r), "sdpa"),
    "ExpectedAttentionPress": (lambda r: ExpectedAttentionPress(compression_ratio=r), "sdpa"),
    "ObservedAttentionPress": (lambda r: ObservedAttentionPress(compression_ratio=r), "eager"),
    "PyramidKVPress": (lambda r: PyramidKVPress(compression_ratio=r, window_size=32), "sdpa"),
}


def step(model, cache, tokens, start):
    ids = torch.tensor([tokens])
    positions = torch.arange(start, start + len(tokens))[None]
    return model(input_ids=ids, past_key_values=cache, position_ids=positions).logits[0].float()


def decode(model, cache, first, n, max_new, eos):
    """restkv's greedy loop and stop rule, with a step at explicit positions ``n, n + 1, ...``."""
    fed = []

    def one(ids):  # [1, 1] -> [1, vocab]
        fed.append(int(ids[0, 0]))
        return step(model, cache, fed[-1:], n + len(fed) - 1)[-1:]

    return decoding.greedy(one, first[None], decoding.StopRule(max_new, eos)).tokens[0]


def prefill(model, ids, press=None):
    cache = DynamicCache()
    if press is None:
        logits = model(input_ids=ids, past_key_values=cache).logits[0, -1].float()
    else:
        with press(model):
            logits = model(input_ids=ids, past_key_values=cache).logits[0, -1].float()
    return cache, logits


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompts")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--budgets", default="128,256")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    models = {
        attn: AutoModelForCausalLM.from_pretrained(args.model_dir, attn_implementation=attn).eval()
        for attn in ("sdpa", "eager")
    }
    prompts = [json.loads(line) for line in open(args.prompts)]
    with open(args.out, "w") as out:
        for p in prompts:
            ids, n, eos = torch.tensor([p["input_ids"]]), len(p["input_ids"]), set(p["eos_ids"])
            cache, first = prefill(models["sdpa"], ids)
            reference = decode(models["sdpa"], cache, first, n, p["max_new_tokens"], eos)
            cache, _ = prefill(models["sdpa"], ids)
            ref_logits = step(models["sdpa"], cache, reference[:-1], n) if len(reference) > 1 else None
            for name, (make, attn) in PRESSES.items():
                for budget in budgets:
                    row = {
                        "task": p["task"],
                        "sample_id": p["sample_id"],
                        "method": f"kvpress:{name}",
                        "budget": budget,
                        "prompt_tokens": n,
                    }
                    try:
                        ratio = 1 - (budget + 0.5) / n
                        start = time.perf_counter()
                        cache, first = prefill(models[attn], ids, make(ratio))
                        row["prefill_s"] = time.perf_counter() - start
                        row["kept_entries"] = sum(layer.keys.shape[1] * layer.keys.shape[2] for layer in cache.layers)
                        forced = DynamicCache()
                        for i, layer in enumerate(cache.layers):
                            forced.update(layer.keys.clone(), layer.values.clone(), i)
                        tokens = decode(models[attn], cache, first, n, p["max_new_tokens"], eos)
                        row["prediction"] = tokenizer.decode(
                            [t for t in tokens if t not in eos], skip_special_tokens=True
                        )
                        if ref_logits is not None:
                            logits = step(models[attn], forced, reference[:-1], n)
                            row["kl"], row["top1"] = metrics.kl_and_top1(ref_logits, logits)
                    except Exception as err:  # a failing press is a result too
                        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    out.write(json.dumps(row) + "\n")
                    out.flush()


if __name__ == "__main__":
    main()
