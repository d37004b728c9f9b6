"""Eviction inside transformers' continuous batching: compress each request's paged cache after its prefill.

transformers' continuous batching (``ContinuousBatchingManager``) keeps every request's keys
and values in one pool of fixed-size blocks (``PagedAttentionCache``); a request owns a block
table, and ``RequestState.position_offset`` is both its next position and its cache length. We
hook into it at four seams, and schedule nothing ourselves:

1. ``manager._create_batch_processor`` (run by the generation thread when it starts): we
   wrap three methods of the batch processor it returns.
2. ``prepare_next_batch``: once the scheduler has built a batch, we note which rows of it are
   the observation window of a prompt (its last ``window_size`` tokens, possibly split over
   prefill chunks), and shift the ``position_ids`` of already-compressed requests by the
   number of tokens they dropped, so their next token's position is the true sequence length.
3. A forward pre-hook on every attention module projects those rows' post-RoPE queries.
4. ``update_batch``: after a request's last prefill chunk has produced its first token, we
   read its keys and values back through its block table, score them with the press's scorer
   (token- or block-aligned), write the kept entries to the first slots of its blocks (per
   layer and KV head), truncate its block table, give the emptied blocks back to the pool and
   set ``position_offset`` to the kept count: the next token is written right after the kept
   entries while its position (2) stays the true one.

Every layer must keep the same number of entries, since a request's block table is shared by
all layers: the ``uniform`` allocator only. The press's block-aligned mode
(``block_size=page_size``) keeps whole pages, so a kept page moves as a unit.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers.generation.continuous_batching.requests import RequestStatus

from .._compat.transformers_serving import (
    blocks_of,
    free_blocks,
    release_blocks,
    total_blocks,
    wrap_batch_processor_factory,
)
from ..adapters import attention_modules, layer_context, project_queries
from ..budgets import tokens_to_keep
from ..keep import Blocks, kept_entries, kept_positions
from ..options import check


@dataclass
class RequestRecord:
    """What eviction did to one request (for tests, the stats endpoint and the benchmark)."""

    request_id: str
    prompt_tokens: int
    kept: int
    blocks_before: int
    blocks_after: int
    #: the pool's free blocks right after this request's prefill (and its compression)
    free_blocks_after: int


@dataclass
class EvictionStats:
    #: the most recent requests' records (a long-running server keeps the last 10,000)
    records: deque = field(default_factory=lambda: deque(maxlen=10_000))
    #: the largest number of requests decoding at the same time
    peak_decoding: int = 0

    def as_dict(self) -> dict:
        return {
            "peak_decoding": self.peak_decoding,
            "requests": [dict(r.__dict__) for r in self.records],
        }


def check_servable(press, model) -> None:
    """One-sentence errors for presses and models the paged eviction cannot serve (the
    ``serving`` rules of :mod:`restkv.options`)."""
    check("serving", press, model=model)


class PagedEviction:
    """Compresses requests of one continuous-batching manager with ``press`` (None or ``full``: none).

    ``attach(manager)`` before ``manager.start()``; :meth:`set_request_press` gives one request a
    press of its own. Stats are read with :meth:`snapshot`.
    """

    def __init__(self, model, press=None):
        check_servable(press, model)
        self.model = model
        self.press = _evicting(press)
        self._request_press: dict[str, object] = {}
        self.modules = {m.layer_idx: m for m in attention_modules(model)}
        self.stats = EvictionStats()
        self.lock = threading.Lock()
        self._window_rows: list[tuple[str, int, int]] = []  # (request id, first row, end row) of this batch
        self._queries: dict[str, dict[int, list[torch.Tensor]]] = {}
        self._dropped: dict[str, int] = {}  # tokens a compressed request no longer stores
        self._handles = []
        self.processor = None

    # -- wiring -----------------------------------------------------------------------------
    def attach(self, manager) -> None:
        """Hook into ``manager`` (a ``ContinuousBatchingManager`` not yet started)."""
        cfg = manager.continuous_batching_config
        if cfg.allow_block_sharing:
            raise ValueError("turn off allow_block_sharing: compressed blocks no longer hold the tokens they hash")
        if cfg.use_async_batching:
            raise ValueError("turn off use_async_batching: eviction runs between a batch's update and the next one")
        wrap_batch_processor_factory(manager, self._hook)
        for module in self.modules.values():
            self._handles.append(module.register_forward_pre_hook(self._capture, with_kwargs=True))

    def set_request_press(self, request_id: str, press) -> None:
        """Compress request ``request_id`` with ``press`` instead of the server's (``full``: not at all)."""
        check_servable(press, self.model)
        with self.lock:
            self._request_press[request_id] = _evicting(press)

    def press_of(self, request_id: str):
        with self.lock:
            return self._request_press.get(request_id, self.press)

    def forget(self, request_id: str) -> None:
        """Drop what is kept for a request that was refused or cancelled (it may never reach a batch)."""
        with self.lock:
            self._request_press.pop(request_id, None)
            self._queries.pop(request_id, None)
            self._dropped.pop(request_id, None)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, processor) -> None:
        if getattr(processor, "restkv_hooked", False):  # a processor reused after a restart
            return
        processor.restkv_hooked = True
        self.processor = processor
        prepare, update = processor.prepare_next_batch, processor.update_batch

        def prepare_next_batch():
            ready = prepare()
            if ready:
                self._after_prepare(processor.inputs_and_outputs)
            return ready

        def update_batch():
            batch = [f.state for f in processor.inputs_and_outputs.requests_in_batch]
            finishing = [
                f.state for f in processor.inputs_and_outputs.requests_in_batch
                if f.has_new_token and f.state.generated_len() == 0
            ]  # fmt: skip
            update()
            self._after_update(processor, finishing)
            self._forget_finished(batch)

        processor.prepare_next_batch = prepare_next_batch
        processor.update_batch = update_batch

    # -- the seams ----------------------------------------------------------------------------
    def _after_prepare(self, io) -> None:
        """Shift compressed requests' positions; note the rows of prompts' observation windows."""
        self._window_rows = []
        start = 0
        for future in io.requests_in_batch:
            state, q = future.state, future.query_length
            past = state.position_offset - q  # prepare_batch_tensors already advanced it
            rid = state.request_id
            if state.generated_len() == 0 and past == 0:  # a (re)started prompt: forget older state
                self._queries.pop(rid, None)
                self._dropped.pop(rid, None)
            dropped = self._dropped.get(rid, 0)
            if dropped:
                io.position_ids[start : start + q] += dropped
            press = self.press_of(rid)
            if press is not None and state.generated_len() == 0:
                n = len(state.initial_tokens)
                window = min(press.scorer.window_size, n)
                first, end = max(n - window, past), min(n, past + q)
                if end > first and budget_of(press, n) < n:
                    self._window_rows.append((rid, start + first - past, start + end - past))
            start += q

    def _capture(self, module, args, kwargs):
        if not self._window_rows:
            return None
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        for rid, a, b in self._window_rows:
            q = project_queries(module, hidden[:, a:b], (cos[:, a:b], sin[:, a:b]))
            self._queries.setdefault(rid, {}).setdefault(module.layer_idx, []).append(q)
        return None

    def _after_update(self, processor, finishing) -> None:
        self._window_rows = []
        scheduler, cache = processor.scheduler, processor.cache
        for state in finishing:
            rid = state.request_id
            queries = self._queries.pop(rid, None)
            press = self.press_of(rid)
            with self.lock:
                self._request_press.pop(rid, None)
            if rid not in scheduler.active_requests:  # finished with its first token: nothing left to shrink
                continue
            before = blocks_of(cache, rid)
            kept = state.position_offset
            if press is not None and queries is not None and budget_of(press, len(state.initial_tokens)) < kept:
                kept = self._compress(cache, state, queries, press)
            record = RequestRecord(rid, len(state.initial_tokens), kept, before, blocks_of(cache, rid), free_blocks(cache))
            with self.lock:
                self.stats.records.append(record)
        live = scheduler.active_requests.keys() | scheduler.waiting_requests.keys()
        for table in (self._queries, self._dropped):  # cancelled requests leave the scheduler without a last batch
            for rid in [r for r in table if r not in live]:
                table.pop(rid, None)
        decoding = sum(1 for s in scheduler.active_requests.values() if s.generated_len() > 0)
        with self.lock:
            self.stats.peak_decoding = max(self.stats.peak_decoding, decoding)

    def _forget_finished(self, states) -> None:
        """Drop what was kept for requests that are done (a long-running server sees many)."""
        for state in states:
            if state.status >= RequestStatus.FINISHED:
                self._dropped.pop(state.request_id, None)
                self._queries.pop(state.request_id, None)
                with self.lock:
                    self._request_press.pop(state.request_id, None)

    # -- compression -------------------------------------------------------------------------------
    @torch.no_grad()
    def _compress(self, cache, state, queries: dict[int, list[torch.Tensor]], press) -> int:
        """Keep ``budget`` entries of every layer in the request's first slots; free the emptied blocks."""
        rid, n = state.request_id, len(state.initial_tokens)
        if state.position_offset != n:
            raise RuntimeError(f"request {rid}: cache holds {state.position_offset} tokens, its prompt {n}")
        budget, scorer = budget_of(press, n), press.scorer
        count = len(self.modules)
        kept_count = None
        slots_of = {}  # the request's slots: the same for every layer of an allocator
        for position, (index, module) in enumerate(sorted(self.modules.items())):
            allocator = cache.layer_to_allocator[index]
            if allocator.index not in slots_of:
                slots_of[allocator.index] = torch.tensor(allocator.get_read_indices(rid, 0, n), device=cache.device)
            slots = slots_of[allocator.index]
            k_pages, v_pages = allocator.get_cache_for_block_table(index)
            k_flat, v_flat = (p.reshape(-1, *p.shape[-2:]) for p in (k_pages, v_pages))
            keys = k_flat.index_select(0, slots).transpose(0, 1)[None]  # [1, H_kv, n, d]
            values = v_flat.index_select(0, slots).transpose(0, 1)[None]
            q = torch.cat(queries[index], dim=-2).to(keys.dtype)
            observed = layer_context(module, (position, count)).scorer_kwargs()
            idx = kept_positions(scorer, q, keys, values, budget, observed, blocks=Blocks.of(press))
            new_k, new_v = kept_entries(idx, keys, values, scorer=scorer, queries=q, observed=observed)
            new_k, new_v = new_k[0].transpose(0, 1), new_v[0].transpose(0, 1)  # [kept, H_kv, d]
            kept = new_k.shape[0]
            if kept_count is not None and kept != kept_count:
                raise RuntimeError("layers kept different counts; serving needs one count for all layers")
            kept_count = kept
            k_flat.index_copy_(0, slots[:kept], new_k.to(k_flat.dtype))
            v_flat.index_copy_(0, slots[:kept], new_v.to(v_flat.dtype))
        for allocator in cache.cache_allocators.values():
            release_blocks(allocator, rid, math.ceil(kept_count / allocator.tokens_per_page))
        state.position_offset = kept_count
        self._dropped[rid] = n - kept_count
        return kept_count

    def snapshot(self) -> dict:
        """The stats so far, and the pool's state now."""
        with self.lock:
            out = self.stats.as_dict()
        cache = self.processor.cache if self.processor is not None else None
        out["free_blocks"] = free_blocks(cache) if cache is not None else None
        out["total_blocks"] = total_blocks(cache) if cache is not None else None
        return out


def _evicting(press):
    """The press, or None when it keeps everything."""
    return press if press is not None and press.scorer is not None else None


def budget_of(press, n: int) -> int:
    """Entries per head ``press`` keeps of an ``n``-token prompt."""
    return tokens_to_keep(n, press.budget, press.compression_ratio, press.scorer.window_size)
