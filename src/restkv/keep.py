"""Keeping entries: the one place where a layer's kept positions are chosen and applied.

Every compression goes through here, whoever calls it: the press at prefill, the evaluation
engine on a recorded prefill, every chunk of a streamed prompt, decoding-time eviction, and
serving (which stores the kept entries in its own paged layout). So a rule about *which*
positions are kept (block alignment, per-row budgets of a padded batch) or *what* is kept at
them (a method's value hook, re-indexed keys) holds on every path at once.

* :func:`kept_positions` chooses ``[b, H_kv, k]`` positions: the scorer's own selection, the
  top of precomputed scores, whole blocks, or a budget per batch row.
* :func:`kept_entries` gathers the keys and values at those positions, after the method's
  value hook (CaM merges evicted values into kept ones).
* :func:`keep` applies positions to a dense cache layer: origins, value hook, re-indexing,
  gather, and the layer's record in the sequence state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import LayerContext, rotate_keys
from .blocks import block_positions
from .scorers.base import top_positions
from .state import LayerState, SequenceState


@dataclass(frozen=True)
class Blocks:
    """Block-aligned selection: whole blocks of ``size`` tokens, scored by the ``reduce`` of theirs."""

    size: int
    reduce: str = "sum"

    @classmethod
    def of(cls, press) -> Blocks | None:
        """The press's block setting, or None when it keeps tokens."""
        return None if press.block_size is None else cls(press.block_size, press.block_reduce)


def kept_positions(
    scorer,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    budget: int,
    observed: dict,
    *,
    scores: torch.Tensor | None = None,
    blocks: Blocks | None = None,
    row_budgets: list[int] | None = None,
) -> torch.Tensor:
    """Positions ``[b, H_kv, k]`` (sorted, window included) that a layer keeps, ``k <= budget``.

    ``observed`` holds what the scorer reads besides the tensors (``key_mask``, ``o_proj``,
    ``scaling``, ``softcap``, ``layer``). ``scores``: the scorer's ``score`` when the caller
    already has it (shared between budgets). ``blocks``: keep whole blocks, the same for every
    head. ``row_budgets``: a budget per batch row (a padded batch under a compression ratio):
    each row selects its own as if alone, then is topped up to ``budget`` with its left padding,
    which stays masked.
    """
    if blocks is not None:
        if scores is None:
            scores = scorer.score(queries, keys, values, budget=budget, **observed)
        window = min(scorer.window_size, keys.shape[-2])
        return block_positions(scores, budget, window, blocks.size, blocks.reduce)
    if row_budgets is not None and len(set(row_budgets)) > 1:
        return _per_row(scorer, queries, keys, values, budget, observed, row_budgets)
    if scores is not None:
        return top_positions(scores, budget)
    return scorer.select(queries, keys, values, budget=budget, **observed)


def _per_row(scorer, queries, keys, values, budget: int, observed: dict, row_budgets: list[int]) -> torch.Tensor:
    rows = []
    mask = observed.get("key_mask")
    for r, own in enumerate(row_budgets):
        row_observed = {**observed, "key_mask": None if mask is None else mask[r : r + 1]}
        idx = scorer.select(queries[r : r + 1], keys[r : r + 1], values[r : r + 1], budget=own, **row_observed)
        padding = torch.arange(budget - own, device=idx.device).expand(1, idx.shape[1], -1)
        rows.append(torch.cat([padding, idx], dim=-1))
    return torch.cat(rows)


def kept_entries(
    idx: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    scorer=None,
    queries: torch.Tensor | None = None,
    observed: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values ``[b, H_kv, k, d]`` kept at ``idx``.

    With ``scorer`` and ``queries`` (a compression that read an observation window) the values
    go through the method's value hook first (:meth:`~restkv.scorers.Scorer.kept_values`).
    """
    if scorer is not None and queries is not None:
        observed = observed or {}
        values = scorer.kept_values(
            queries, keys, values, idx,
            scaling=observed.get("scaling"), key_mask=observed.get("key_mask"), softcap=observed.get("softcap"),
        )  # fmt: skip
    gather = idx[..., None].expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, gather), values.gather(2, gather)


@dataclass
class Reindex:
    """Re-indexing (``rerotate``): kept keys move to contiguous positions ending before the next.

    ``target`` caps the new next position (every compressed layer computes the same one);
    ``next_after`` is set to it, per batch row, once a layer has been re-indexed.
    """

    target: int
    next_after: torch.Tensor | None = None


def keep(
    layer,
    idx: torch.Tensor,
    state: SequenceState,
    context: LayerContext,
    *,
    scorer=None,
    queries: torch.Tensor | None = None,
    observed: dict | None = None,
    reindex: Reindex | None = None,
    probe: int = 0,
    prompt: bool = True,
) -> None:
    """Keep ``idx`` ``[b, H_kv, k]`` of a dense layer's entries, in place.

    The last ``probe`` entries are a question probe (never in ``idx``); entries appended since
    the layer's last compression are the next prompt tokens (``prompt``) or generated ones, for
    origin tracking. ``scorer``/``queries``/``observed``: the value hook, see
    :func:`kept_entries`. ``reindex``: move the kept keys to contiguous positions.
    """
    n = layer.keys.shape[-2]
    if state.origins is not None:
        state.origins.update(context.index, n, idx, probe, prompt=prompt)
    keys, values = kept_entries(idx, layer.keys, layer.values, scorer=scorer, queries=queries, observed=observed)
    if reindex is not None:
        keys, reindex.next_after = reindexed_keys(keys, n, idx, state, context, reindex.target, probe)
    layer.keys, layer.values = keys, values
    state.layers[context.index] = _kept_record(state, context.index, idx, n, idx.shape[1])


def kept_valid(state: SequenceState, index: int, idx: torch.Tensor | None, n: int, heads: int) -> torch.Tensor | None:
    """``[b, heads, k]``, False where an entry kept by ``idx`` (all ``n`` when None) of layer
    ``index`` is padding; None when every kept entry is a real token."""
    valid = _valid_entries(state, state.layers.get(index), n, heads)
    if valid is not None and idx is not None:
        valid = valid.to(idx.device).gather(2, idx)
    return None if valid is None or bool(valid.all()) else valid


def _kept_record(state: SequenceState, index: int, idx: torch.Tensor | None, n: int, heads: int) -> LayerState:
    """The layer's record after keeping ``idx`` of its ``n`` entries (all of them when None)."""
    old = state.layers.get(index)
    kept = n if idx is None else idx.shape[-1]
    prompt_tokens = old.prompt_tokens if old is not None else n
    return LayerState(prompt_tokens=prompt_tokens, kept=kept, valid=kept_valid(state, index, idx, n, heads))


def _valid_entries(state: SequenceState, old: LayerState | None, n: int, heads: int) -> torch.Tensor | None:
    """``[b, heads, n]``, False at the layer's padding entries; None when there is none.

    A layer compressed before knows which of its first entries were padding (entries appended
    since are real tokens); a layer not compressed yet holds the prompt, whose padding
    ``state.prompt_mask`` marks.
    """
    if old is not None:
        if old.valid is None:
            return None
        valid = torch.ones(*old.valid.shape[:2], n, dtype=torch.bool, device=old.valid.device)
        valid[..., : old.kept] = old.valid
        return valid
    if state.prompt_mask is None:
        return None
    return state.prompt_mask[:, None, :n].expand(-1, heads, -1)


def record_uncompressed(state: SequenceState, index: int, n: int, heads: int) -> None:
    """Register a layer that kept all its ``n`` entries, so decoding builds its mask like the others'."""
    state.layers[index] = _kept_record(state, index, None, n, heads)


def reindexed_keys(keys, n: int, idx, state: SequenceState, context: LayerContext, target: int, probe: int = 0):
    """The kept ``keys`` (already gathered at ``idx`` of the layer's ``n`` entries) at their new
    contiguous positions, and the new next position ``[b]``.

    Entries of a re-indexed cache always sit at contiguous positions ending right before the
    next one, so entry ``i`` of ``n`` is at ``end - n + i``.
    """
    if context.inv_freq is None:
        raise ValueError("rerotate needs the layer's rotary frequencies")
    end = state.next_pos
    if end is None or bool((end != end[0]).any()):
        raise ValueError("rerotate needs one next position for every batch row (no padded batches)")
    end, k = int(end[0]), idx.shape[-1]
    new_end = min(end - probe, target)
    delta = (new_end - k + torch.arange(k, device=idx.device)) - (end - n + idx)
    return rotate_keys(keys, delta, context.inv_freq), torch.full_like(state.next_pos, new_end)
