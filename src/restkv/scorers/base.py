"""The scorer contract: observation tensors in, per-token scores and kept positions out.

A scorer is pure tensor code. It never sees a model, a hook or a cache: the press (or the
evaluation engine) hands it queries, keys, values and, where the method needs it, the output
projection, and gets back the positions to keep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..attention import group_size
from ..checks import check_choice, check_int

GQA_REDUCTIONS = ("mean", "max", "sum")


@dataclass
class Scorer:
    """Base class: score the ``n - window_size`` prefix tokens, keep the top ones plus the window.

    Subclasses implement :meth:`prefix_scores`; :meth:`select` is shared by every method, so
    methods differ only in how they score. Methods with a rule of their own beyond scoring
    override a hook instead of adding a branch to the core: :meth:`kept_values` (CaM merges
    evicted values into kept ones), and :meth:`remember`, :meth:`observe_step` and
    :meth:`decode_select` for decoding-time eviction (H2O keeps accumulating attention).

    Attributes:
        window_size: the last ``window_size`` prompt tokens are always kept (the observation
            window for methods that read attention, the recent window for the others).
        gqa_reduce: how the ``g`` query-head score rows of a GQA group become one row per KV
            head (``mean``, ``max`` or ``sum``).
    """

    window_size: int = 32
    gqa_reduce: str = "mean"

    name: ClassVar[str] = "base"
    #: which queries the method reads: "window" (last window_size), "all" (the whole prompt),
    #: or "none". The press only computes what is asked for.
    query_span: ClassVar[str] = "window"
    needs_o_proj: ClassVar[bool] = False
    #: whether the method reads the layer's rotary frequencies ``inv_freq`` (Expected Attention
    #: moves its estimated queries to future positions); the press then reads them from the model
    needs_rotary: ClassVar[bool] = False
    #: whether the method scores once, from every prompt query at its position (Expected
    #: Attention): presses refuse chunked prefill and decoding-time eviction for it
    one_prefill_only: ClassVar[bool] = False
    #: whether the scores depend on the budget (then they cannot be shared between budgets)
    budget_dependent: ClassVar[bool] = False
    #: the layer allocator a press uses with this scorer unless told otherwise
    default_allocator: ClassVar[str] = "uniform"

    def __post_init__(self):
        check_int("window_size", self.window_size, 0)
        check_choice("gqa_reduce", self.gqa_reduce, GQA_REDUCTIONS)

    # -- to implement ---------------------------------------------------------------------
    def prefix_scores(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        budget: int,
        o_proj: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        scaling: float | None,
        softcap: float | None,
        layer: tuple[int, int] | None = None,
        inv_freq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``[b, H or H_kv, n - window_size]`` of the prefix tokens; higher is kept.

        ``layer`` is ``(index, count)`` among the model's compressed layers, for methods whose
        choice depends on depth (LaCache); ``inv_freq`` the layer's rotary frequencies ``[d/2]``
        (given when ``needs_rotary``); the others ignore them.
        """
        raise NotImplementedError

    # -- hooks with a default rule ---------------------------------------------------------
    def kept_values(self, queries, keys, values, kept, *, scaling=None, key_mask=None, softcap=None) -> torch.Tensor:
        """Values ``[b, H_kv, n, d]`` to gather at ``kept`` after a prefill compression (as they are)."""
        return values

    def remember(self, queries, keys, kept, context) -> torch.Tensor:
        """What decoding-time eviction needs from a compression of this layer: the last window queries.

        ``queries`` are those the compression read, ``keys`` the layer's keys before it, ``kept``
        the positions kept (None when nothing was evicted), ``context`` the layer's
        :class:`~restkv.adapters.LayerContext`.
        """
        return queries[..., -max(self.window_size, 1) :, :]

    def observe_step(self, memory, query, keys, context) -> torch.Tensor:
        """Fold a decoding step's query ``[b, H, 1, d]`` into the memory (keys include its own entry)."""
        return torch.cat([memory, query], dim=-2)[..., -max(self.window_size, 1) :, :]

    def decode_select(self, memory, keys, values, budget: int, context) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept positions while decoding, and the memory that goes with them: the method's own
        selection, with the last queries seen as the observation window."""
        return self.select(memory, keys, values, budget=budget, **context.scorer_kwargs()), memory

    # -- shared ---------------------------------------------------------------------------
    def query_count(self, n: int) -> int:
        """How many of an ``n``-token input's last queries this method reads."""
        return {"window": min(self.window_size, n), "all": n, "none": 1}[self.query_span]

    def params(self) -> dict:
        """The method's parameters and their values (for records and the CLI)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def score(
        self,
        queries,
        keys,
        values,
        *,
        budget,
        o_proj=None,
        key_mask=None,
        scaling=None,
        softcap=None,
        layer=None,
        inv_freq=None,
    ):
        """Per-KV-head scores ``[b, H_kv, n]`` in float32; the window scores ``+inf``.

        Padding keys (``key_mask`` False) score ``-inf`` so they are never preferred.
        """
        self._check(queries, keys, values, o_proj, key_mask, inv_freq)
        n = keys.shape[-2]
        w = min(self.window_size, n)
        q = {"window": queries[..., -w:, :] if w else queries[..., :0, :], "all": queries}.get(self.query_span, queries)
        observed = dict(o_proj=o_proj, key_mask=key_mask, scaling=scaling, softcap=softcap, layer=layer)
        if self.needs_rotary:
            observed["inv_freq"] = inv_freq
        prefix = self.prefix_scores(q, keys, values, budget=budget, **observed).float()
        prefix = self.reduce_groups(prefix, keys.shape[1])
        if key_mask is not None:
            prefix = prefix.masked_fill(~key_mask[:, None, : n - w].to(prefix.device), float("-inf"))
        window = torch.full((*prefix.shape[:2], w), float("inf"), device=prefix.device)
        return torch.cat([prefix, window], dim=-1)

    def select(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        *,
        budget: int,
        o_proj: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        scaling: float | None = None,
        softcap: float | None = None,
        layer: tuple[int, int] | None = None,
        inv_freq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Kept positions ``[b, H_kv, min(budget, n)]``, sorted ascending, window included.

        Args:
            queries: ``[b, H, q, d]`` post-RoPE queries; the last ``window_size`` are the
                observation window (pass the whole prompt or just its end).
            keys: ``[b, H_kv, n, d]``.
            values: ``[b, H_kv, n, d]``.
            budget: entries to keep per KV head; must exceed ``window_size`` when ``n > budget``.
            o_proj: the attention output projection weight ``[hidden, H * d]`` (ReST-KV).
            key_mask: optional ``[b, n]`` bool, False for padding.
            scaling: the model's logit scale, if not ``1/sqrt(d)``.
            softcap: the model's attention logit soft-cap, if it has one.
            layer: ``(index, count)`` among the compressed layers (depth-aware methods).
            inv_freq: the layer's rotary frequencies ``[d/2]`` (methods with ``needs_rotary``).
        """
        check_int("budget", budget, 1)
        b, kv_heads, n, _ = keys.shape
        if n <= budget:
            self._check(queries, keys, values, o_proj, key_mask, inv_freq)
            return torch.arange(n, device=keys.device).expand(b, kv_heads, n).clone()
        if budget <= self.window_size:
            raise ValueError(
                f"budget ({budget}) must be larger than window_size ({self.window_size}): "
                "the window alone would fill it"
            )
        observed = dict(o_proj=o_proj, key_mask=key_mask, scaling=scaling, softcap=softcap, layer=layer)
        scores = self.score(queries, keys, values, budget=budget, inv_freq=inv_freq, **observed)
        return top_positions(scores, budget)

    def reduce_groups(self, scores: torch.Tensor, kv_heads: int) -> torch.Tensor:
        """Per-query-head scores ``[b, H, n]`` to per-KV-head ones ``[b, H_kv, n]`` (``gqa_reduce``)."""
        heads = scores.shape[1]
        if heads == kv_heads:
            return scores
        grouped = scores.view(scores.shape[0], kv_heads, heads // kv_heads, scores.shape[-1])
        if self.gqa_reduce == "max":
            return grouped.amax(dim=2)
        return grouped.sum(dim=2) if self.gqa_reduce == "sum" else grouped.mean(dim=2)

    def _check(self, queries, keys, values, o_proj, key_mask, inv_freq=None):
        for label, t in (("queries", queries), ("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{label} must be a 4-D tensor [batch, heads, tokens, head_dim], got {shape}")
        if keys.shape[:3] != values.shape[:3]:
            raise ValueError(
                f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must agree in batch, heads and tokens"
            )
        if queries.shape[0] != keys.shape[0] or queries.shape[-1] != keys.shape[-1]:
            raise ValueError(
                f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must agree in batch size and head_dim"
            )
        if not (queries.is_floating_point() and keys.is_floating_point() and values.is_floating_point()):
            raise ValueError("queries, keys and values must be floating-point tensors")
        group_size(queries, keys)
        if (
            self.query_span == "window"
            and self.window_size
            and queries.shape[-2] < min(self.window_size, keys.shape[-2])
        ):
            raise ValueError(
                f"{self.name} reads the last window_size={self.window_size} queries, "
                f"but only {queries.shape[-2]} were given"
            )
        if self.query_span == "all" and queries.shape[-2] > keys.shape[-2]:
            raise ValueError(f"got {queries.shape[-2]} queries for {keys.shape[-2]} keys")
        if self.needs_o_proj:
            if o_proj is None:
                raise ValueError(f"{self.name} needs o_proj, the output projection weight [hidden, heads * head_dim]")
            if o_proj.dim() != 2 or o_proj.shape[1] != queries.shape[1] * values.shape[-1]:
                raise ValueError(
                    f"o_proj has shape {tuple(o_proj.shape)}, expected [hidden, {queries.shape[1] * values.shape[-1]}] "
                    "(heads * head_dim)"
                )
        if self.needs_rotary and (inv_freq is None or tuple(inv_freq.shape) != (keys.shape[-1] // 2,)):
            got = "none" if inv_freq is None else f"shape {tuple(inv_freq.shape)}"
            raise ValueError(
                f"{self.name} needs the layer's rotary frequencies inv_freq [{keys.shape[-1] // 2}], got {got}"
            )
        if key_mask is not None and tuple(key_mask.shape) != (keys.shape[0], keys.shape[2]):
            raise ValueError(f"key_mask has shape {tuple(key_mask.shape)}, expected {(keys.shape[0], keys.shape[2])}")


def top_positions(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` highest scores along the last dim, sorted ascending.

    Ties (plateaus after max pooling, equal constant scores) go to the more recent position,
    so the kept set is deterministic on every device.
    """
    n = scores.shape[-1]
    order = scores.flip(-1).sort(dim=-1, descending=True, stable=True).indices[..., :count]
    return (n - 1 - order).sort(dim=-1).values
