"""Prefill and decoding latency per method, budget and context length, as ratios within one run.

Prefill is measured on real prompts (random token ids). Decoding speed depends on how many
entries each layer holds, not on their content, so the decode measurement starts from a cache
filled to the exact size each method leaves (the full prompt for ``full``, the budget
otherwise) with random keys and values: this makes 32K-token decode timings possible without
a 32K-token prefill per method. Every measurement is repeated after warm-up; medians and
min/max are reported.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache

from ..adapters import attention_modules, is_sliding
from ..decoding import StopRule, greedy
from ..generation import CacheStep, prefill
from ..press import KVPress, hooks_only_press
from ..state import LayerState, SequenceState, set_state


def _timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def synthetic_cache(model, length: int, entries: int | None) -> DynamicCache:
    """A cache as a press leaves it after an ``length``-token prompt: ``entries`` per layer
    (None: all), random content, with the press's decoding state."""
    cache = DynamicCache(config=model.config)
    config = getattr(model.config, "text_config", None) or model.config
    kv_heads = config.num_key_value_heads
    dtype = next(model.parameters()).dtype
    state = SequenceState(next_pos=torch.tensor([length], device=model.device))
    for module in attention_modules(model):
        index = module.layer_idx
        layer = cache.layers[index]
        sliding = is_sliding(module, layer)
        window = getattr(config, "sliding_window", None) or length
        kept = min(length, window - 1) if sliding else (length if entries is None else min(entries, length))
        shape = (1, kv_heads, kept, module.head_dim)
        cache.update(
            torch.randn(shape, dtype=dtype, device=model.device),
            torch.randn(shape, dtype=dtype, device=model.device),
            index,
        )
        if not sliding:
            state.layers[index] = LayerState(prompt_tokens=length, kept=kept)
    state.budgets = {i: 0 for i in state.layers}
    set_state(cache, state)
    return cache


@torch.inference_mode()
def measure_prefills(model, length: int, presses: list[KVPress], repeats: int) -> list[list[float]]:
    """Prefill seconds per press, the presses taking turns within each repeat.

    Taking turns (after one warm-up each) means a slow spell of a shared machine hits every
    press alike, so ratios between presses hold even when absolute times drift.
    """
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(length)).to(model.device)

    def run(press):
        cache = DynamicCache(config=model.config)
        with press(model):
            prefill(model, ids, cache, press.chunk_size)

    for press in presses:
        run(press)
    times: list[list[float]] = [[] for _ in presses]
    for _ in range(repeats):
        for i, press in enumerate(presses):
            start = time.perf_counter()
            run(press)
            times[i].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def measure_decode(model, length: int, entries: int | None, steps: int, repeats: int) -> list[float]:
    """Milliseconds per decoding step from a cache of ``entries`` (None: ``length``) per layer, in
    the eager loop on transformers' cache (building the cache is not timed)."""
    return measure_decode_paths(model, length, entries, steps, repeats, ("eager",))["eager"]


@torch.inference_mode()
def measure_decode_paths(model, length: int, entries: int | None, steps: int, repeats: int, paths=("eager",)):
    """Milliseconds per decoding step for each of ``paths`` (``eager``: transformers' cache and the
    press hooks; ``static``: static buffers; ``compiled``: static buffers through ``torch.compile``),
    the paths taking turns within each repeat. Returns ``{path: [ms per repeat]}`` and, for the
    static paths, ``{path + "_first_s": seconds}``: building the buffers plus the first step, in
    which a first use of this buffer size compiles."""
    from ..static_decode import StaticDecoder

    hooks = KVPress(None) if entries is None else hooks_only_press()
    vocab = model.config.get_text_config().vocab_size
    first = torch.zeros(1, vocab, device=model.device)
    first[0, 3] = 1.0  # the first token fed is 3; the step time does not depend on which
    stop = StopRule(steps + 1)  # ``steps`` calls of the step after the first token, no end token
    out: dict = {path: [] for path in paths}

    def eager():
        cache = synthetic_cache(model, length, entries)
        with hooks(model):
            return greedy(CacheStep(model, cache, length), first, stop).ms_per_step

    def static(compile):
        cache = synthetic_cache(model, length, entries)
        began = time.perf_counter()
        decoder = StaticDecoder(model, cache, steps + 1, None, compile=compile)
        logits = decoder.step(first.argmax(-1, keepdim=True))  # not part of the per-step timing: it may compile
        first_s = time.perf_counter() - began
        return greedy(decoder.step, logits, stop).ms_per_step, first_s

    for round in range(repeats + 1):  # the first round warms up
        for path in paths:
            if path == "eager":
                ms = eager()
            else:
                ms, first_s = static(path == "compiled")
                out.setdefault(f"{path}_first_s", first_s)  # the first round's: compile included
            if round:
                out[path].append(ms)
    return out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
