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
its prefill budget with the chunk's last queries as the observation window.
"""

from __future__ import annotations

import torch

from .adapters import LayerContext, last_queries, layer_context, project_queries
from .state import LayerState, SequenceState


def context_of(module, state: SequenceState) -> LayerContext:
    return layer_context(module, state.layer_position(module.layer_idx))


def remember(press, scorer, queries, keys, kept, context: LayerContext, state: SequenceState) -> None:
    """After a compression, keep what decoding-time eviction will need for this layer."""
    if press.decode_budget is not None:
        state.memory[context.index] = scorer.remember(queries, keys, kept, context)


def evict_step(press, module, layer, hidden, position_embeddings, state: SequenceState) -> None:
    """After a decoding step's attention: update this layer's memory and evict if due."""
    scorer, context = press.scorer, context_of(module, state)
    query = project_queries(module, hidden, position_embeddings)  # [b, H, 1, d]
    memory = scorer.observe_step(state.memory[context.index], query, layer.keys, context)
    state.memory[context.index] = memory
    if layer.keys.shape[-2] < press.decode_budget + press.every:
        return
    idx, state.memory[context.index] = scorer.decode_select(
        memory, layer.keys, layer.values, press.decode_budget, context
    )
    shrink(layer, idx, state, context.index, press.decode_budget)


def recompress_chunk(press, scorer, module, layer, hidden, position_embeddings, state: SequenceState) -> None:
    """Chunked prefill: after a chunk's attention, cut the layer back to its budget.

    The chunk's last ``window_size`` queries are the observation window (all its queries for
    H2O, which then accumulates attention over the chunk only).
    """
    context = context_of(module, state)
    budget = state.budgets[context.index]
    keys = layer.keys
    queries = last_queries(module, hidden, position_embeddings, scorer.query_count(hidden.shape[1]))
    idx = None
    if keys.shape[-2] > budget:
        idx = scorer.select(queries, keys, layer.values, budget=budget, **context.scorer_kwargs())
        shrink(layer, idx, state, context.index, budget)
    remember(press, scorer, queries, keys, idx, context, state)


def shrink(layer, idx: torch.Tensor, state: SequenceState, index: int, kept: int) -> None:
    """Keep ``idx`` ``[b, H_kv, kept]`` of the layer's entries and update its mask state."""
    keys, values = layer.keys, layer.values
    n = keys.shape[-2]
    gather = idx[..., None].expand(-1, -1, -1, keys.shape[-1])
    layer.keys, layer.values = keys.gather(2, gather), values.gather(2, gather)
    old = state.layers[index]
    valid = None
    if old.valid is not None:  # entries appended since the last compression are real tokens
        full = torch.ones(*old.valid.shape[:2], n, dtype=torch.bool, device=old.valid.device)
        full[..., : old.kept] = old.valid
        valid = full.gather(2, idx)
        valid = None if bool(valid.all()) else valid
    state.layers[index] = LayerState(prompt_tokens=old.prompt_tokens, kept=kept, valid=valid)
