"""Compressing one cache layer, and the per-sequence state that decoding a compressed cache needs.

Shared by the press (which calls it from a hook during the model's own prefill) and the
evaluation engine (which calls it on a recorded prefill, once per method and budget), so both
compress in exactly the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .adapters import is_sliding, logit_softcap
from .budgets import layer_budgets
from .cache import VarlenLayer
from .decode_eviction import remember_prompt
from .scorers.base import top_positions
from .select import head_adaptive_positions


@dataclass
class LayerState:
    """A compressed layer: how many prompt entries it kept and which of them are real tokens."""

    prompt_tokens: int
    kept: int
    #: ``[b, H_kv, kept]`` bool, False where a padding token was kept to fill the budget;
    #: None when every kept entry is real (the common case)
    valid: torch.Tensor | None = None


@dataclass
class PressStats:
    """What the last prefill did, for reports: prompt length and entries kept per compressed layer."""

    prompt_tokens: int = 0
    #: KV entries (tokens x KV heads, batch row 0) kept in each compressed layer
    entries_per_layer: dict[int, int] = field(default_factory=dict)
    heads_per_layer: dict[int, int] = field(default_factory=dict)

    @property
    def kept_entries(self) -> int:
        """KV entries (tokens x KV heads) kept over all compressed layers, per batch row."""
        return sum(self.entries_per_layer.values())


@dataclass
class SequenceState:
    """What the press knows about one sequence; stored on its cache as ``cache.restkv_state``.

    Keeping it on the cache (not on the press or the ``with`` block) means a compressed cache
    decodes correctly in any later press block, and two caches never share state.
    """

    layers: dict[int, LayerState] = field(default_factory=dict)
    #: next position id per batch row (the cache is shorter than the sequence once compressed)
    next_pos: torch.Tensor | None = None
    #: ``[b, n]`` bool, False at the prompt's padding; None without padding
    prompt_mask: torch.Tensor | None = None
    budgets: dict[int, int] | None = None
    #: decoding-time eviction: each layer's last window queries, or H2O's accumulated attention
    recent_queries: dict[int, torch.Tensor] = field(default_factory=dict)
    accumulated: dict[int, torch.Tensor] = field(default_factory=dict)
    #: this prompt's observation window when the press has ``window_size="auto"``
    window: int | None = None


def sequence_state(cache) -> SequenceState:
    """The cache's state, created fresh for an empty cache.

    A state set on an empty cache before prefill (carrying the prompt's auto window) is kept.
    """
    state = getattr(cache, "restkv_state", None)
    if state is None or (cache.get_seq_length() == 0 and (state.layers or state.next_pos is not None)):
        state = SequenceState()
        cache.restkv_state = state
    return state


def effective_scorer(press, state: SequenceState):
    """The press's scorer, with this prompt's window when the press has an auto window."""
    if getattr(press, "window_range", None) is None or state.window is None:
        return press.scorer
    low, high = press.window_range
    return dataclasses.replace(press.scorer, window_size=max(low, min(high, state.window)))


def query_span(scorer, n: int) -> int:
    """How many of the prompt's last queries ``scorer`` reads."""
    return {"window": min(scorer.window_size, n), "all": n, "none": 1}[scorer.query_span]


def plan_budgets(press, modules, cache, n: int) -> dict[int, int]:
    """Entries kept per KV head in each compressible (non-sliding) layer for an ``n``-token prompt."""
    compressible = [m for m in modules if not is_sliding(m, cache.layers[m.layer_idx])]
    budgets = layer_budgets(
        press.allocator, n, len(compressible), press.budget, press.compression_ratio, press.scorer.window_size
    )
    return {m.layer_idx: b for m, b in zip(compressible, budgets)}


def compress_layer(
    press, module, cache, queries: torch.Tensor, state: SequenceState, stats: PressStats, memo: dict | None = None
) -> None:
    """Shrink the layer's cache to its planned budget (in place, or by a per-head-length layer).

    ``queries`` are the post-RoPE queries of the prompt's last ``query_span`` tokens; ``module``
    is the layer's attention module (for the output projection, logit scale and soft-cap).
    ``memo`` lets several budgets of one method share scores that do not depend on the budget
    (the evaluation engine passes one per prompt).
    """
    scorer, index = effective_scorer(press, state), module.layer_idx
    layer = cache.layers[index]
    keys, values = layer.keys, layer.values
    kv_heads, n = keys.shape[1], keys.shape[-2]
    budget = state.budgets[index]
    stats.heads_per_layer[index] = kv_heads
    if n <= budget:
        # nothing to evict, but the layer is registered so decoding builds its mask like the others'
        stats.entries_per_layer[index] = n * kv_heads
        state.layers[index] = LayerState(prompt_tokens=n, kept=n, valid=_kept_valid(state, None, kv_heads))
        remember_prompt(press, module, keys, queries, None, state)
        return
    observed = dict(
        budget=budget,
        o_proj=module.o_proj.weight,
        key_mask=state.prompt_mask,
        scaling=getattr(module, "scaling", None),
        softcap=logit_softcap(module),
        layer=(list(state.budgets).index(index), len(state.budgets)),
    )
    if press.allocator == "adakv":
        scores = _scores(scorer, queries, keys, values, observed, memo, index)
        positions, lengths = head_adaptive_positions(scores, budget, min(scorer.window_size, n), press.head_floor)
        varlen = VarlenLayer(keys, values, positions, lengths)
        cache.layers[index] = varlen
        valid = _kept_valid(state, positions, kv_heads)
        valid = varlen.valid if valid is None else valid & varlen.valid
        stats.entries_per_layer[index] = int(lengths[0].sum())
        state.layers[index] = LayerState(prompt_tokens=n, kept=varlen.width, valid=None if bool(valid.all()) else valid)
        return
    if memo is not None and not scorer.budget_dependent:
        idx = top_positions(_scores(scorer, queries, keys, values, observed, memo, index), budget)
    else:
        idx = scorer.select(queries, keys, values, **observed)
    if scorer.merges_values:
        values = scorer.merge_values(
            queries,
            keys,
            values,
            idx,
            scaling=observed["scaling"],
            key_mask=state.prompt_mask,
            softcap=observed["softcap"],
        )
    gather = idx[..., None].expand(-1, -1, -1, keys.shape[-1])
    layer.keys = keys.gather(2, gather)
    layer.values = values.gather(2, gather)
    stats.entries_per_layer[index] = budget * kv_heads
    state.layers[index] = LayerState(prompt_tokens=n, kept=budget, valid=_kept_valid(state, idx, kv_heads))
    remember_prompt(press, module, keys, queries, idx, state)


def _scores(scorer, queries, keys, values, observed, memo, index):
    """``scorer.score``, computed once per layer for scorers whose scores ignore the budget."""
    if memo is None or scorer.budget_dependent:
        return scorer.score(queries, keys, values, **observed)
    key = (type(scorer), tuple(sorted(scorer.params().items())), index)
    if key not in memo:
        memo[key] = scorer.score(queries, keys, values, **observed)
    return memo[key]


def _kept_valid(state: SequenceState, idx: torch.Tensor | None, kv_heads: int) -> torch.Tensor | None:
    """``[b, H_kv, kept]`` False where a kept entry is padding; None when all are real tokens."""
    if state.prompt_mask is None:
        return None
    valid = state.prompt_mask[:, None, :].expand(-1, kv_heads, -1)
    valid = valid.gather(2, idx) if idx is not None else valid
    return None if bool(valid.all()) else valid


def compressed_mask(state: LayerState, stored: int, new: int, groups: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive attention mask ``[b, 1 or H, new, stored + new]`` for a compressed layer.

    The ``state.kept`` prompt entries are visible (except kept padding), the entries appended
    since are visible, and the ``new`` tokens see each other causally. None when nothing needs
    masking (one new token, no kept padding), which lets SDPA take its fast path.
    """
    if state.valid is None and new == 1:
        return None
    total = stored + new
    device = state.valid.device if state.valid is not None else None
    visible = torch.ones(new, total, dtype=torch.bool, device=device)
    visible[:, stored:] = torch.ones(new, new, dtype=torch.bool, device=device).tril()
    visible = visible[None, None]
    if state.valid is not None:
        valid = torch.ones(*state.valid.shape[:2], total, dtype=torch.bool, device=device)
        valid[..., : state.kept] = state.valid
        valid = valid.repeat_interleave(groups, dim=1)
        visible = visible & valid[:, :, None, :]
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)
