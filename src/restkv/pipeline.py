"""Prefill once, compress many: the pipeline every comparison of methods runs on.

With prefill-time eviction the prompt's forward pass is the same for every method: only the
stored cache differs. So a prompt is prefilled once with the full cache while the queries the
scorers read are recorded (:meth:`Pipeline.record`); each press then gets its compressed cache
from that record through the same :func:`~restkv.compress.compress_layer`, and so the same
:mod:`restkv.keep`, that a press uses inside a forward (:meth:`Pipeline.derive`). A press that
prefills in chunks never reads the record: its prompt goes through the press chunk by chunk, as
:func:`restkv.generation.prefill` feeds it for users (:meth:`Pipeline.stream`).

The evaluation engine orchestrates prompts, configurations, batching and the store on top of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .adapters import attention_modules, is_sliding, last_queries, needs_frequencies, rope_frequencies
from .attention import sharing
from .cache import fork_cache
from .compress import SHARED_ATTENTION, compress_layer, effective_scorer, plan_budgets
from .decode_eviction import recompress_chunk, settle, sliding_layers
from .generation import forward_step, prefill
from .plan import PrefillStep
from .state import PressStats, SequenceState, set_state


@dataclass
class PrefillRecord:
    """One full-cache prefill and what the scorers need from it."""

    cache: DynamicCache
    queries: dict[int, torch.Tensor]  # layer -> post-RoPE queries of the prompt's last tokens
    last_logits: torch.Tensor  # [b, vocab]
    prompt_tokens: int
    prefill_s: float
    #: tokens of a reconstruction probe fed after the prompt in the recorded forward (its entries
    #: are in ``cache`` and its queries in ``queries``; every cache derived drops them)
    probe: int = 0


class Pipeline:
    """The prefill and compression of one model for a set of presses (what their scorers read
    decides what a recorded prefill keeps)."""

    def __init__(self, model, presses: list):
        self.model = model
        self.modules = attention_modules(model)
        scorers = [p.scorer for p in presses if p.scorer is not None]
        self.needs_all_queries = any(s.query_span == "all" for s in scorers)
        self.window = max([s.window_size for s in scorers] + [1])
        self.frequencies = rope_frequencies(model) if any(needs_frequencies(p) for p in presses) else {}

    @torch.inference_mode()
    def record(self, input_ids: torch.Tensor, probe: torch.Tensor | None = None) -> PrefillRecord:
        """Prefill ``input_ids`` ``[1, n]`` with the full cache, recording each layer's last queries
        (all of them when a scorer reads every query).

        ``probe`` ``[1, p]``: a reconstruction probe fed after the prompt in the same forward (as a
        press with ``probe`` feeds it); the probe's queries are recorded (every query's when a
        scorer reads them all) and the logits are the prompt's last position's. Only for models
        without sliding-window layers (:func:`shares_probe`)."""
        n = input_ids.shape[1]
        span = n if self.needs_all_queries else min(self.window, n)
        p = 0 if probe is None else probe.shape[1]
        if p:
            span = n + p if self.needs_all_queries else p
            input_ids = torch.cat([input_ids, probe.to(input_ids.device)], dim=1)
        queries: dict[int, torch.Tensor] = {}

        def keep_queries(module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            queries[module.layer_idx] = last_queries(module, hidden, kwargs["position_embeddings"], span)

        handles = [m.register_forward_hook(keep_queries, with_kwargs=True) for m in self.modules]
        cache = DynamicCache(config=self.model.config)
        try:
            start = time.perf_counter()
            if p:  # the logits of the prompt's last position, before the probe
                keep = torch.tensor([n - 1], device=self.model.device)
                ids = input_ids.to(self.model.device)
                logits = forward_step(self.model, cache, ids, 0, logits_to_keep=keep)[:, -1]
            else:
                logits = prefill(self.model, input_ids.to(self.model.device), cache)
            elapsed = time.perf_counter() - start
        finally:
            for h in handles:
                h.remove()
        return PrefillRecord(cache, queries, logits.float(), n, elapsed, p)

    def derive(
        self, record: PrefillRecord, presses: list, memo: dict | None = None, windows: list | None = None
    ) -> list[tuple[DynamicCache, PressStats, float]]:
        """``(cache, stats, seconds)`` per press, built from ``record`` layer by layer; the record
        is not modified.

        ``windows``: per press, the prompt's question length for an auto window. Every press's
        compression of a layer gets the same ``memo`` (one per prompt, kept between calls), so
        scoring work the presses share is done once: budget-independent scores once per prompt,
        and, through :func:`restkv.attention.sharing`, the observation attention of a window and
        the accumulated attention of all queries once per layer. That attention is dropped
        before the next layer, so at most one layer's worth is held; the compressed caches are
        held together, as a decoding batch holds them. The kept entries are the same as when
        each press compresses alone. A shared computation's time is counted to the first press
        that needs it.
        """
        memo = {} if memo is None else memo
        windows = windows or [None] * len(presses)
        built = []
        for press, window in zip(presses, windows, strict=True):
            cache, stats = fork_cache(record.cache), PressStats(prompt_tokens=record.prompt_tokens)
            if press.scorer is None:
                built.append([press, cache, stats, None, 0, 0.0, None])
                continue
            start = time.perf_counter()
            next_pos = torch.tensor([record.prompt_tokens + record.probe], device=self.model.device)
            state = SequenceState(next_pos=next_pos, window=window)
            state.budgets = plan_budgets(press, self.modules, cache, record.prompt_tokens)
            span = effective_scorer(press, state).query_count(record.prompt_tokens)
            # the recorded prompt, compressed as one piece (with its probe, as a press's forward feeds it)
            step = PrefillStep(record.prompt_tokens, probe=record.probe)
            built.append([press, cache, stats, state, span, time.perf_counter() - start, step])
        for module in self.modules:
            index = module.layer_idx
            for entry in built:
                press, cache, stats, state, span, _, step = entry
                if state is None or is_sliding(module, cache.layers[index]):
                    continue
                start = time.perf_counter()
                if record.probe:  # what a press's forward with this probe does after the layer
                    layer = cache.layers[index]
                    with sharing(memo.setdefault(SHARED_ATTENTION, {})):  # the probe's attention, once
                        recompress_chunk(press, press.scorer, module, layer, None, None, state, step,
                                         self.frequencies.get(index), queries=record.queries[index])  # fmt: skip
                    stats.entries_per_layer[index] = layer.keys.shape[-2] * layer.keys.shape[1]
                    stats.heads_per_layer[index] = layer.keys.shape[1]
                else:
                    queries = record.queries[index][..., -span:, :]
                    compress_layer(press, module, cache, queries, state, stats, memo, self.frequencies.get(index), step)
                entry[5] += time.perf_counter() - start
            memo.pop(SHARED_ATTENTION, None)  # this layer's attention is not needed by the next
        out = []
        for _, cache, stats, state, _, seconds, step in built:
            if state is not None:
                start = time.perf_counter()
                settle(cache, state, step, self.frequencies)
                set_state(cache, state)
                seconds += time.perf_counter() - start
            out.append((cache, stats, seconds))
        return out

    @torch.inference_mode()
    def stream(self, input_ids: torch.Tensor, press, window: int | None, probe: torch.Tensor | None = None):
        """``press``'s cache, prefilled through the press chunk by chunk (question-aware when it has
        an auto window and ``window`` is the question's length) or followed by its ``probe``;
        returns the cache, the last prompt position's logits ``[1, vocab]`` and the prefill seconds."""
        cache = DynamicCache(config=self.model.config)
        set_state(cache, SequenceState(window=window))
        question = window if press.question_aware and window is not None else 0
        start = time.perf_counter()
        with press(self.model):
            ids = input_ids.to(self.model.device)
            logits = prefill(self.model, ids, cache, press.chunk_size, False, question, probe)
        return cache, logits.float(), time.perf_counter() - start


def shares_probe(model, press) -> bool:
    """Whether ``press``'s reconstruction probe can be read from one recorded forward shared by
    every such press (:meth:`Pipeline.record` with a probe, then :meth:`Pipeline.derive`): a
    press with a probe and no chunks, on a model without sliding-window layers (those would
    have to keep the probe's predecessors, which only a press's own forward arranges) and a dense
    prefill (``sparse_prefill`` changes the keys the probe reads)."""
    if press.probe is None or press.chunk_size is not None or press.sparse_prefill is not None:
        return False
    return not sliding_layers(DynamicCache(config=model.config))
