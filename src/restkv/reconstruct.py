"""KVzip's reconstruction passes: the context repeated chunk by chunk after its own cache.

Unlike the reconstruction probe of :mod:`restkv.probes` (the context and its copy in one
forward), these passes continue from the already-prefilled context cache: each feeds only a
repeat instruction and one chunk of the context, is scored layer by layer, and its own
entries are cut off again, so the reconstruction costs about one more prefill of the context
(in chunks of ``chunk_size``) instead of a prefill of twice its length.
"""

from __future__ import annotations

import torch

from .adapters import attention_modules, decoder_model, last_queries


def reconstruction_inputs(context_ids, scorer, first_prompt, later_prompt, answer=None):
    """``(start, end, ids)`` per pass: the chunk ``start:end`` of ``context_ids`` ``[1, n]``
    after ``first_prompt`` (the first chunk) or after ``later_prompt`` and the previous chunk's
    last ``scorer.overlap`` tokens, then ``answer`` (ids ``[1, r]``; ``answer`` may be None)."""
    n, size = context_ids.shape[1], scorer.chunk_size
    answer = context_ids[:, :0] if answer is None else answer.to(context_ids.device)
    passes = []
    for start in range(0, n, size):
        end = min(start + size, n)
        lead = [first_prompt] if start == 0 else [later_prompt, context_ids[:, max(start - scorer.overlap, 0) : start]]
        ids = torch.cat([p.to(context_ids.device) for p in lead] + [answer, context_ids[:, start:end]], dim=1)
        passes.append((start, end, ids))
    return passes


@torch.inference_mode()
def kvzip_scores(model, cache, context_ids, scorer, first_prompt, later_prompt, answer=None) -> dict[int, torch.Tensor]:
    """Per-layer scores ``[b, H_kv, n]`` of a prefilled context ``[1, n]`` in ``cache``; the
    cache holds the context alone again afterwards. Sinks score above everything."""
    n = context_ids.shape[1]
    modules = attention_modules(model)
    scores = {m.layer_idx: None for m in modules}
    span = {}

    def score(module, args, kwargs, output):
        layer = cache.layers[module.layer_idx]
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        queries = last_queries(module, hidden, kwargs["position_embeddings"], hidden.shape[1])
        start, end = span["chunk"]
        chunk = scorer.chunk_scores(queries, layer.keys, start, end, getattr(module, "scaling", None))
        if scores[module.layer_idx] is None:
            scores[module.layer_idx] = chunk.new_zeros(*chunk.shape[:2], n)
        scores[module.layer_idx][..., start:end] = chunk
        layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]  # the repeat goes
        return None

    handles = [m.register_forward_hook(score, with_kwargs=True) for m in modules]
    try:
        for start, end, ids in reconstruction_inputs(context_ids, scorer, first_prompt, later_prompt, answer):
            span["chunk"] = (start, end)
            decoder_model(model)(input_ids=ids, cache=cache, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    top = max(float(s.max()) for s in scores.values()) + 1.0
    for s in scores.values():
        s[..., : scorer.sinks] = top  # the sinks are always kept
    return scores


def kvzip_kept(scores: dict[int, torch.Tensor], scorer, compression_ratio: float) -> dict[int, list[list[int]]]:
    """Kept positions per layer and KV head (row 0): the best scores over all layers and heads
    (per layer with ``scorer.layerwise``), ``int(total * compression_ratio)`` entries removed."""
    layers = sorted(scores)
    stacked = torch.stack([scores[i][0] for i in layers])  # [L, H_kv, n]
    L, heads, n = stacked.shape
    flat = stacked.reshape(L, -1) if scorer.layerwise else stacked.reshape(1, -1)
    removed = int(flat.shape[-1] * compression_ratio)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.topk(flat.shape[-1] - removed, dim=-1).indices, True)
    keep = keep.view(L, heads, n)
    return {i: [torch.nonzero(keep[j, h]).flatten().tolist() for h in range(heads)] for j, i in enumerate(layers)}
