"""Peak memory of prefill and decoding, one fresh process per measurement.

Run as ``python -m restkv.bench.memory '<json spec>'``; prints one JSON line. On CPU the peak is
the process's resident-set high-water mark (``VmHWM``), reset after the model is loaded and
again before decoding, so each phase's peak is its own; on GPU it is
``torch.cuda.max_memory_allocated``. Model weights are included in CPU peaks; the baseline
(right after loading) is reported too, so the difference is what the method costs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap back to the OS, else the new peak starts at memory no longer in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _peak_mib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return _rss_kib("VmHWM") / 1024


def _reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak()


def probe(spec: dict) -> dict:
    """Load, prefill ``spec['length']`` tokens under the method, decode a few tokens; peaks in MiB."""
    import torch
    from transformers import DynamicCache

    from ..cache import cache_bytes
    from ..decoding import StopRule, greedy
    from ..generation import CacheStep, prefill
    from ..press import get_press

    device = spec.get("device", "cpu")
    if spec.get("shape"):
        from .shapes import random_model

        model = random_model(spec["shape"], spec.get("layers"), spec.get("dtype", "bfloat16"), device=device)
    elif spec.get("weights_only"):  # a model folder without a tokenizer (tests)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec["model"]).to(device).eval()
    else:
        from ..models import load_model

        model = load_model(
            spec["model"], device=device, dtype=spec.get("dtype", "auto"), attn=spec.get("attn", "auto")
        ).model
    method = spec["method"]
    press = (
        get_press(method)
        if method == "full"
        else get_press(method, budget=spec["budget"], chunk_size=spec.get("chunk_size"), **(spec.get("params") or {}))
    )
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (1, spec["length"]), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():  # first-call allocations (thread pools, kernels) are not the method's
        model(input_ids=ids[:, :8])
    _reset(device)
    baseline = _rss_kib("VmRSS") / 1024 if not device.startswith("cuda") else torch.cuda.memory_allocated() / 2**20
    if spec.get("kv_quant"):
        from ..quantized import parse_kv_quant, quantized_cache

        cache = quantized_cache(model, *parse_kv_quant(spec["kv_quant"]))
    else:
        cache = DynamicCache(config=model.config)
    start = time.perf_counter()
    with torch.inference_mode(), press(model):
        logits = prefill(model, ids, cache, spec.get("chunk_size"))
        prefill_s = time.perf_counter() - start
        prefill_peak = _peak_mib(device)
        kv_bytes = cache_bytes(cache)
        _reset(device)
        # decode_tokens steps after the prefill's token, no end token: the same count for every method
        greedy(CacheStep(model, cache, spec["length"]), logits, StopRule(spec.get("decode_tokens", 8) + 1))
        decode_peak = _peak_mib(device)
    return {
        "baseline_mib": baseline,
        "prefill_peak_mib": prefill_peak,
        "decode_peak_mib": decode_peak,
        "prefill_s": prefill_s,
        "kv_bytes": kv_bytes,  # what the cache stores after prefill (quantized: codes, scales, zero points)
    }


def measure(spec: dict, timeout: float = 3600) -> dict:
    """Run :func:`probe` in a fresh Python process so that no earlier allocation counts."""
    done = subprocess.run(
        [sys.executable, "-m", "restkv.bench.memory", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe failed for {spec}: {last}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
