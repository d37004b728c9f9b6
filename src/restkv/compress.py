"""Compressing one cache layer after prefill.

Shared by the press (which calls it from a hook during the model's own prefill) and the
evaluation engine (which calls it on a recorded prefill, once per method and budget), so both
compress in exactly the same way. The per-sequence state it records lives in :mod:`restkv.state`.
"""

from __future__ import annotations

import dataclasses

import torch

from .adapters import LayerContext, is_sliding
from .attention import sharing
from .budgets import layer_budgets
from .cache import VarlenLayer
from .decode_eviction import context_of, remember
from .keep import Blocks, Reindex, keep, kept_positions, kept_valid, record_uncompressed
from .plan import PrefillStep
from .select import head_adaptive_positions
from .state import LayerState, PressStats, SequenceState

#: the entry of a compression memo that holds the layer's shared attention (the engine drops it
#: once every configuration has compressed the layer; the rest of the memo is budget-independent
#: scores, kept for the prompt)
SHARED_ATTENTION = "shared attention"


def effective_scorer(press, state: SequenceState):
    """The press's scorer, with this prompt's window when the press has an auto window."""
    if press.window_range is None or state.window is None:
        return press.scorer
    low, high = press.window_range
    return dataclasses.replace(press.scorer, window_size=max(low, min(high, state.window)))


def plan_budgets(press, modules, cache, n: int) -> dict[int, int]:
    """Entries kept per KV head in each compressible (non-sliding) layer for an ``n``-token prompt."""
    # a cache built without a config creates its layers as the forward reaches them
    layers = cache.layers
    compressible = [m for m in modules if not is_sliding(m, layers[m.layer_idx] if m.layer_idx < len(layers) else None)]
    budgets = layer_budgets(
        press.allocator, n, len(compressible), press.budget, press.compression_ratio, press.scorer.window_size
    )
    return {m.layer_idx: b for m, b in zip(compressible, budgets)}


@dataclasses.dataclass
class _Job:
    """One layer's compression: what every way of keeping entries reads."""

    press: object
    scorer: object
    context: LayerContext
    queries: torch.Tensor
    state: SequenceState
    memo: dict | None
    step: PrefillStep | None = None

    @property
    def key_mask(self) -> torch.Tensor | None:
        """The prompt's padding mask on this layer's device (layers may sit on several GPUs)."""
        mask = self.state.prompt_mask
        return None if mask is None else mask.to(self.queries.device)

    @property
    def observed(self) -> dict:
        """What the scorer reads besides the tensors and the budget."""
        return {"key_mask": self.key_mask, **self.context.scorer_kwargs()}

    def scores(self, keys, values, budget: int) -> torch.Tensor:
        """``scorer.score``, computed once per layer for scorers whose scores ignore the budget."""
        compute = lambda: self.scorer.score(self.queries, keys, values, budget=budget, **self.observed)  # noqa: E731
        if self.memo is None or self.scorer.budget_dependent:
            return compute()
        key = (type(self.scorer), tuple(sorted(self.scorer.params().items())), self.context.index)
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def compress_layer(
    press,
    module,
    cache,
    queries: torch.Tensor,
    state: SequenceState,
    stats: PressStats,
    memo: dict | None = None,
    inv_freq: torch.Tensor | None = None,
    step: PrefillStep | None = None,
) -> None:
    """Shrink the layer's cache to its planned budget (in place, or by a per-head-length layer).

    ``queries`` are the post-RoPE queries of the prompt's last ``scorer.query_count(n)`` tokens;
    ``module`` is the layer's attention module. ``memo`` (one per prompt: the evaluation engine
    passes the same to every configuration) shares scores that do not depend on the budget
    between budgets, and, under its :data:`SHARED_ATTENTION` entry, observation attention
    computed on the same queries and keys between methods (:func:`restkv.attention.sharing`).
    ``inv_freq`` (the layer's rotary frequencies) is needed with ``press.rerotate``, and then
    ``step`` (the forward's, or the engine's compression's) receives the next position.
    """
    job = _Job(press, effective_scorer(press, state), context_of(module, state, inv_freq), queries, state, memo, step)
    index = job.context.index
    layer = cache.layers[index]
    kv_heads, n = layer.keys.shape[1], layer.keys.shape[-2]
    budget = state.budgets[index]
    stats.heads_per_layer[index] = kv_heads
    if n <= budget:
        # nothing to evict, but the layer is registered so decoding builds its mask like the others'
        stats.entries_per_layer[index] = n * kv_heads
        record_uncompressed(state, index, n, kv_heads)
        remember(press, job.scorer, queries, layer.keys, None, job.context, state)
        return
    with sharing(None if memo is None else memo.setdefault(SHARED_ATTENTION, {})):
        KEEPERS[press.allocator](job, cache, budget, stats)


def _keep_dense(job: _Job, cache, budget: int, stats: PressStats) -> None:
    """Every KV head keeps ``budget`` entries (or fewer, as whole blocks); the layer stays dense."""
    index, scorer = job.context.index, job.scorer
    layer = cache.layers[index]
    keys, values = layer.keys, layer.values
    row_budgets = None
    if job.press.compression_ratio is not None and job.state.prompt_mask is not None:
        row_budgets = _row_budgets(job, budget)
    shared = job.memo is not None and not scorer.budget_dependent
    blocks = Blocks.of(job.press)
    scores = job.scores(keys, values, budget) if blocks is not None or shared else None
    observed = job.observed
    idx = kept_positions(scorer, job.queries, keys, values, budget, observed, scores=scores, blocks=blocks,
                         row_budgets=row_budgets)  # fmt: skip
    reindex = Reindex(max(job.state.budgets.values())) if job.press.rerotate else None
    keep(layer, idx, job.state, job.context, scorer=scorer, queries=job.queries, observed=observed, reindex=reindex)
    if reindex is not None:
        job.step.next_after = reindex.next_after
    stats.entries_per_layer[index] = idx.shape[-1] * keys.shape[1]  # the budget, or less as whole blocks
    remember(job.press, scorer, job.queries, keys, idx, job.context, job.state)


def _keep_per_head(job: _Job, cache, budget: int, stats: PressStats) -> None:
    """AdaKV: the layer's heads share ``H_kv x budget`` entries, stored without padding."""
    index, state = job.context.index, job.state
    layer = cache.layers[index]
    keys, values = layer.keys, layer.values
    kv_heads, n = keys.shape[1], keys.shape[-2]
    window = min(job.scorer.window_size, n)
    positions, lengths = head_adaptive_positions(job.scores(keys, values, budget), budget, window, job.press.head_floor)
    varlen = VarlenLayer(keys, values, positions, lengths)
    cache.layers[index] = varlen
    valid = kept_valid(state, index, positions, n, kv_heads)
    valid = varlen.valid if valid is None else valid & varlen.valid
    stats.entries_per_layer[index] = int(lengths[0].sum())
    state.layers[index] = LayerState(prompt_tokens=n, kept=varlen.width, valid=None if bool(valid.all()) else valid)


def _row_budgets(job: _Job, budget: int) -> list[int]:
    """With a compression ratio, what each row of a padded batch keeps in this layer when run
    alone: the ratio of its own length, not of the padded one."""
    position, count = job.context.position
    press, window = job.press, job.scorer.window_size
    real = job.state.prompt_mask.sum(-1).tolist()
    return [min(layer_budgets(press.allocator, n, count, None, press.compression_ratio, window)[position], budget)
            for n in real]  # fmt: skip


#: how a layer keeps its entries, by allocator (the allocator decides how many per layer and head)
KEEPERS = {"uniform": _keep_dense, "pyramid": _keep_dense, "adakv": _keep_per_head}


def compressed_mask(
    state: LayerState, stored: int, new: int, groups: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor | None:
    """Additive attention mask ``[b, 1 or H, new, stored + new]`` for a compressed layer, on
    ``device`` (the cache's).

    The ``state.kept`` prompt entries are visible (except kept padding), the entries appended
    since are visible, and the ``new`` tokens see each other causally. None when nothing needs
    masking (one new token, no kept padding), which lets SDPA take its fast path.
    """
    if state.valid is None and new == 1:
        return None
    total = stored + new
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
