"""Eviction after prefill: keep each layer at its size over long generations and across prompt chunks.

Every ``every`` generated tokens, a layer whose cache has grown past its decode budget is scored
again with the method's own rule and cut back. The rule is the scorer's (its hooks
``remember``, ``observe_step`` and ``decode_select``), so nothing here knows a method:

* methods that read an observation window (ReST-KV, SnapKV, TOVA, CaM, ...) use the last
  ``window_size`` queries seen (prompt and generated) as the window; TOVA with ``every=1``
  is its per-step rule (drop the lowest-scored entry each step);
* H2O keeps accumulating the attention each entry receives from every new query;
* position rules (StreamingLLM's sinks and recency, LaCache's ladder) apply to the entries the
  cache holds, in order; for LaCache this is its iterative compaction.

Chunked prefill uses the same machinery: after every chunk, each layer is compressed back to
its prefill budget. The observation window is the chunk's last queries or, when the chunk is
followed by a question probe (question-aware streaming, after Finch), the probe's queries; the
probe's own entries are then removed.

With ``rerotate=True`` every compression also moves the kept keys to contiguous positions that
end right before the next token's (their rotary embedding is rotated by the difference), so
positions stay below about budget + chunk + question whatever the input length.
"""

from __future__ import annotations

import dataclasses

import torch

from .adapters import LayerContext, last_queries, layer_context, project_queries, rotate_keys
from .keep import Reindex, keep, kept_positions
from .plan import PrefillStep
from .state import SequenceState
from .timing import phased


def context_of(module, state: SequenceState, inv_freq: torch.Tensor | None = None) -> LayerContext:
    return layer_context(module, state.layer_position(module.layer_idx), inv_freq)


def remember(press, scorer, queries, keys, kept, context: LayerContext, state: SequenceState) -> None:
    """After a compression, keep what decoding-time eviction will need for this layer."""
    if press.decode_budget is not None:
        state.memory[context.index] = scorer.remember(queries, keys, kept, context)


def evict_step(press, module, layer, hidden, position_embeddings, state: SequenceState, step: PrefillStep,
               inv_freq=None) -> None:  # fmt: skip
    """After a decoding step's attention: update this layer's memory and evict if due."""
    query = project_queries(module, hidden, position_embeddings)  # [b, H, 1, d]
    observe_and_evict(press, module, layer, query, state, inv_freq, step)


def observe_and_evict(press, module, layer, query, state: SequenceState, inv_freq=None, step=None) -> None:
    """Feed this step's post-rotary ``query`` ``[b, H, 1, d]`` to the layer's memory and evict if
    due (the static decoder calls this between steps, with the query its attention recorded;
    ``step`` is the forward's, where re-indexing leaves the next position)."""
    scorer, context = press.scorer, context_of(module, state, inv_freq)
    memory = scorer.observe_step(state.memory[context.index], query, layer.keys, context)
    state.memory[context.index] = memory
    if layer.keys.shape[-2] < press.decode_budget + press.every:
        return
    idx, state.memory[context.index] = scorer.decode_select(
        memory, layer.keys, layer.values, press.decode_budget, context
    )
    reindex = Reindex(press.decode_budget) if press.rerotate else None
    keep(layer, idx, state, context, reindex=reindex, prompt=False)
    if reindex is not None:
        step.next_after = reindex.next_after


@phased("chunk_compress")
def recompress_chunk(press, scorer, module, layer, hidden, position_embeddings, state, step: PrefillStep,
                     inv_freq=None, queries=None) -> None:  # fmt: skip
    """Chunked prefill: after a chunk's attention, cut the layer back to its budget.

    Without a probe, the chunk's last ``window_size`` queries are the observation window (all
    its queries for H2O, which then accumulates attention over the chunk only; a chunk shorter
    than the window is its own window). With a probe of ``p`` tokens, the probe's queries are
    the window, ``budget`` entries are kept among the others, and the probe is dropped.
    ``queries``: the forward's recorded post-RoPE queries (at least as many as the scorer reads;
    the last ones are used), for a layer whose whole forward was recorded (``hidden`` is then None).
    """
    context = context_of(module, state, inv_freq)
    budget, probe = state.budgets[context.index], step.probe
    chunk = hidden.shape[1] if queries is None else layer.keys.shape[-2]
    if probe or scorer.window_size > chunk:
        scorer = dataclasses.replace(scorer, window_size=probe or chunk)
    keys = layer.keys
    if queries is None:
        queries = last_queries(module, hidden, position_embeddings, scorer.query_count(chunk))
    else:
        queries = queries[..., -scorer.query_count(chunk) :, :]
    context_tokens = keys.shape[-2] - probe
    observed = context.scorer_kwargs()
    idx = None
    if context_tokens > budget:
        idx = kept_positions(scorer, queries, keys, layer.values, budget + probe, observed)
        idx = idx[..., : idx.shape[-1] - probe]  # the window is the probe: drop it
    elif probe or press.rerotate:
        idx = torch.arange(context_tokens, device=keys.device).expand(*keys.shape[:2], context_tokens)
    if idx is not None:
        reindex = Reindex(max(state.budgets.values())) if press.rerotate else None
        keep(layer, idx, state, context, scorer=scorer, queries=queries, observed=observed, reindex=reindex,
             probe=probe)  # fmt: skip
        if reindex is not None:
            step.next_after = reindex.next_after
    remember(press, scorer, queries, keys, idx, context, state)


def sliding_layers(cache) -> list[tuple[int, object]]:
    """``(index, layer)`` of the cache's sliding-window layers (they keep their own window; a press
    never compresses them)."""
    return [(index, layer) for index, layer in enumerate(cache.layers) if getattr(layer, "is_sliding", False)]


def settle(cache, state: SequenceState, step: PrefillStep, frequencies: dict[int, torch.Tensor]) -> None:
    """After a forward (or an engine compression): drop a probe from the sliding layers, move
    them like the compressed ones if keys were re-indexed, and set the next position."""
    if not step.probe and step.next_after is None:
        return
    end = state.next_pos - step.probe  # the probe's positions are reused by what comes next
    shift = 0 if step.next_after is None else int(step.next_after[0] - end[0])
    for index, layer in sliding_layers(cache):
        if layer.keys is None:
            continue
        drop_probe(layer, step.probe)
        if shift:
            layer.keys = rotate_keys(layer.keys, torch.full(layer.keys.shape[-2:-1], shift), frequencies[index])
    state.next_pos = end if step.next_after is None else step.next_after


def drop_probe(layer, probe: int) -> None:
    """Cut the last ``probe`` entries out of a sliding layer that recorded its past, and bring it
    back to its window (as if the probe had never been fed)."""
    if probe and layer.record_past:
        window = layer.sliding_window - 1
        layer.keys = layer.keys[..., : layer.keys.shape[-2] - probe, :][..., -window:, :]
        layer.values = layer.values[..., : layer.values.shape[-2] - probe, :][..., -window:, :]
        layer.cumulative_length -= probe
        layer.record_past = False
