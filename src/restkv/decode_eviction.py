"""Eviction during decoding: keep each layer's cache at ``decode_budget`` over long generations.

Every ``every`` generated tokens, a layer whose cache has grown past its decode budget is scored
again with the method's own rule and cut back:

* methods that read an observation window (ReST-KV, SnapKV, TOVA, CaM, ...) use the last
  ``window_size`` queries seen (prompt and generated) as the window; TOVA with ``every=1``
  is its per-step rule (drop the lowest-scored entry each step);
* H2O keeps accumulating the attention each entry receives from every new query;
* position rules (StreamingLLM's sinks and recency, LaCache's ladder) apply to the entries the
  cache holds, in order; for LaCache this is its iterative compaction.
"""

from __future__ import annotations

import torch

from .adapters import logit_softcap, project_queries
from .attention import accumulated_attention, repeat_kv
from .scorers.base import top_positions


def remember_prompt(press, module, keys, queries, idx, state) -> None:
    """After prefill compression, keep what decoding-time eviction will need for this layer."""
    if press.decode_budget is None:
        return
    scorer, index = press.scorer, module.layer_idx
    if scorer.query_span == "all":
        acc = accumulated_attention(
            queries, keys, scaling=getattr(module, "scaling", None), softcap=logit_softcap(module)
        )
        if idx is not None:
            acc = acc.gather(2, repeat_kv(idx[..., None], acc.shape[1] // idx.shape[1])[..., 0])
        state.accumulated[index] = acc
    else:
        state.recent_queries[index] = queries[..., -max(scorer.window_size, 1) :, :]


def evict_step(press, module, layer, hidden, position_embeddings, state) -> None:
    """After a decoding step's attention: update this layer's statistics and evict if due."""
    scorer, index = press.scorer, module.layer_idx
    query = project_queries(module, hidden, position_embeddings)  # [b, H, 1, d]
    keys, values = layer.keys, layer.values
    scaling, softcap = getattr(module, "scaling", None), logit_softcap(module)
    if scorer.query_span == "all":
        acc = state.accumulated[index]
        acc = torch.cat([acc, acc.new_zeros(*acc.shape[:2], keys.shape[-2] - acc.shape[-1])], dim=-1)
        state.accumulated[index] = acc + accumulated_attention(query, keys, scaling=scaling, softcap=softcap)
    else:
        window = max(scorer.window_size, 1)
        state.recent_queries[index] = torch.cat([state.recent_queries[index], query], dim=-2)[..., -window:, :]
    n = keys.shape[-2]
    if n < press.decode_budget + press.every:
        return
    if scorer.query_span == "all":
        scores = scorer._reduce_groups(state.accumulated[index], keys.shape[1])
        w = min(scorer.window_size, n)
        scores[..., n - w :] = float("inf")
        idx = top_positions(scores, press.decode_budget)
        group = state.accumulated[index].shape[1] // keys.shape[1]
        state.accumulated[index] = state.accumulated[index].gather(2, repeat_kv(idx[..., None], group)[..., 0])
    else:
        layers = list(state.budgets)
        idx = scorer.select(
            state.recent_queries[index],
            keys,
            values,
            budget=press.decode_budget,
            o_proj=module.o_proj.weight,
            scaling=scaling,
            softcap=softcap,
            layer=(layers.index(index), len(layers)),
        )
    shrink(layer, idx, state, index, press.decode_budget)


def recompress_chunk(press, module, layer, hidden, position_embeddings, state) -> None:
    """Chunked prefill: after a chunk's attention, cut the layer back to its budget.

    The chunk's last ``window_size`` queries are the observation window (all its queries for
    H2O, which then accumulates attention over the chunk only).
    """
    scorer, index = press.scorer, module.layer_idx
    budget = state.budgets[index]
    n = layer.keys.shape[-2]
    span = {"window": min(scorer.window_size, hidden.shape[1]), "all": hidden.shape[1], "none": 1}[scorer.query_span]
    cos, sin = position_embeddings
    queries = project_queries(module, hidden[:, -span:], (cos[..., -span:, :], sin[..., -span:, :]))
    if press.decode_budget is not None and scorer.query_span != "all":
        state.recent_queries[index] = queries[..., -max(scorer.window_size, 1) :, :]
    if n <= budget:
        return
    layers = list(state.budgets)
    idx = scorer.select(
        queries,
        layer.keys,
        layer.values,
        budget=budget,
        o_proj=module.o_proj.weight,
        scaling=getattr(module, "scaling", None),
        softcap=logit_softcap(module),
        layer=(layers.index(index), len(layers)),
    )
    shrink(layer, idx, state, index, budget)


def shrink(layer, idx: torch.Tensor, state, index: int, kept: int) -> None:
    """Keep ``idx`` ``[b, H_kv, kept]`` of the layer's entries and update its mask state."""
    from .compress import LayerState  # local: compress imports this module

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
