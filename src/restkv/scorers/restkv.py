"""ReST-KV: evict the tokens whose removal least changes the layer's output.

Follows An et al., "ReST-KV: Robust KV Cache Eviction with Layer-wise Output Reconstruction
and Spatial-Temporal Smoothing" (ICLR 2026, arXiv 2605.08840) as specified in the project's
method.md; the authors' ``an-yongqi/rest-kv`` (``RestKVCluster``) was read for fidelity.

Where we differ from the reference on purpose:

* a token holding (numerically) all of a head's attention gets a large finite score instead
  of ``inf * 0 = nan``;
* the attention drift of adaptive pooling is computed per batch row (the reference uses row 0);
* with GQA the query-head scores of a group are reduced and the cache keeps ``H_kv`` heads
  (the reference repeats keys and values to ``H`` heads);
* attention stays in float32 for scoring in every model dtype.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from ..attention import reduced_window_attention, repeat_kv, window_attention
from ..checks import check_choice, check_int, is_number
from ..smoothing import POOLINGS, TEMPORAL_RULES, adaptive_pool, pool, temporal, validate_alpha
from .base import Scorer

METRIC_MODES = ("after", "before")
#: observation windows from this many queries on (a reconstruction probe's) have their attention
#: reduced chunk by chunk when nothing needs the whole map; shorter windows keep the one-shot path
REDUCE_FROM = 512
_WHOLE_MAP: ContextVar[bool] = ContextVar("restkv_whole_window_map", default=False)


@contextlib.contextmanager
def whole_attention_map():
    """Within the block, ReST-KV holds its window's whole attention map however long the window
    (the one-shot path): what the chunked reduction is measured against."""
    token = _WHOLE_MAP.set(True)
    try:
        yield
    finally:
        _WHOLE_MAP.reset(token)
#: float32 entries per temporary in the blocked output error (1 MiB: stays in a core's cache)
_BLOCK_ELEMENTS = 1 << 18


def head_gram(o_proj: torch.Tensor, heads: int) -> torch.Tensor:
    """``G_h = W_o^h^T W_o^h`` ``[H, d, d]`` so that ``||W_o^h x|| = sqrt(x^T G_h x)``.

    Working in the head's ``d`` dimensions instead of the model's hidden size keeps memory at
    ``O(n d)`` per head even for 8K-wide models.
    """
    w = o_proj.float().reshape(o_proj.shape[0], heads, -1).transpose(0, 1)  # [H, hidden, d]
    return w.transpose(1, 2) @ w


def output_error_norm(o: torch.Tensor, prefix_v: torch.Tensor, gram: torch.Tensor | None) -> torch.Tensor:
    """``||W_o^h (o_h - v_j)||`` for every query head ``h`` and prefix token ``j``: ``[b, H_kv, g, L]``.

    ``o`` is ``[b, H_kv, g, d]`` (each query head's output), ``prefix_v`` ``[b, H_kv, 1, L, d]``.
    The same arithmetic as the plain form on the full difference tensor (``tests/test_restkv_scorer.py``
    holds them equal), element for element, but over blocks of tokens small enough to stay in cache: the difference, its
    product with the Gram matrix and the quadratic form of a block are made and used while
    they are hot instead of each being a full ``[b, H, L, d]`` pass through memory.
    """
    b, kv, g, d = o.shape
    length = prefix_v.shape[-2]
    out = torch.empty(b, kv, g, length, dtype=torch.float32, device=o.device)
    step = max(16, _BLOCK_ELEMENTS // (b * kv * g * d))
    o = o[..., None, :]
    grams = gram.view(kv, g, d, d) if gram is not None else None
    for start in range(0, length, step):
        diff = o - prefix_v[..., start : start + step, :]  # [b, H_kv, g, block, d]
        if grams is None:
            out[..., start : start + step] = diff.norm(dim=-1)
        else:
            quad = torch.matmul(diff, grams).mul_(diff).sum(-1)
            out[..., start : start + step] = quad.clamp_min_(0).sqrt_()
    return out


def odds_times_norm(attn: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``attn / (1 - attn) * norm`` with the ``attn == 1`` limit made finite and top-ranked.

    When one token takes all of a head's attention, ``1 - attn`` and ``norm`` are both 0 in
    floating point. That token carries the head's whole output, so it scores above every other
    token of its row: twice the row's largest finite score, plus one.
    """
    odds = attn / (1.0 - attn).clamp_min(torch.finfo(torch.float32).tiny)
    score = odds * norm
    saturated = attn >= 1.0
    if saturated.any():  # rare: only then pay for the masking
        score = score.masked_fill(saturated, 0.0)
        top = score.amax(dim=-1, keepdim=True)
        score = torch.where(saturated, 2 * top + 1, score)
    return score


@dataclass
class RestKVScorer(Scorer):
    """ReST-KV scores: attention odds ratio times the projected output error of evicting a token.

    Defaults are the paper's main setting. Parameters:
        window_size: observation window ``w`` (last ``w`` prompt tokens, always kept).
        alpha: EMA weight of the newer query.
        temporal: ``ema``, ``mean`` or ``last`` reduction over the window's queries.
        metric_mode: ``after`` (smooth attention, then score once) or ``before`` (score per
            query, then smooth the scores).
        use_wo: measure the error through the head's slice of the output projection.
        tau: exponent on the error norm (``after`` mode only).
        pooling: ``adaptive``, ``avgpool``, ``maxpool`` or ``none``.
        kernel_size: pooling kernel (minimum kernel for ``adaptive``).
        scale: adaptive pooling's drift scale.
    """

    alpha: float = 0.3
    temporal: str = "ema"
    metric_mode: str = "after"
    use_wo: bool = True
    tau: float = 1.0
    pooling: str = "adaptive"
    kernel_size: int = 5
    scale: float = 2000.0

    name = "restkv"

    @property
    def needs_o_proj(self) -> bool:  # type: ignore[override]
        return self.use_wo

    @property
    def budget_dependent(self) -> bool:  # type: ignore[override]
        return self.pooling == "adaptive"  # the drift is measured over the top B - w keys

    def __post_init__(self):
        super().__post_init__()
        check_int("window_size", self.window_size, 1)
        validate_alpha(self.alpha)
        check_choice("temporal", self.temporal, TEMPORAL_RULES)
        check_choice("metric_mode", self.metric_mode, METRIC_MODES)
        check_choice("pooling", self.pooling, POOLINGS)
        check_int("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not isinstance(self.use_wo, bool):
            raise ValueError(f"use_wo must be True or False, got {self.use_wo!r}")
        for label, value in (("tau", self.tau), ("scale", self.scale)):
            if not is_number(value) or not value > 0:
                raise ValueError(f"{label} must be a positive number, got {value!r}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, **context):
        """ReST-KV's score per query head: attention odds ratio times the output error of dropping
        each token (through ``o_proj`` when ``use_wo``), smoothed over the window and pooled."""
        n, w = keys.shape[-2], queries.shape[-2]
        heads = queries.shape[1]
        gram = head_gram(o_proj, heads) if self.use_wo else None
        attn = None  # the window's whole attention map [b,H,w,n], where something needs it
        if self.metric_mode == "after" and self.pooling != "adaptive" and w >= REDUCE_FROM and not _WHOLE_MAP.get():
            # a probe's thousands of queries: only their temporal reduction is used, so it is
            # summed chunk by chunk and the map is never held whole
            attn_kw = {"scaling": scaling, "key_mask": key_mask, "softcap": softcap}
            a = reduced_window_attention(queries, keys, self.temporal, self.alpha, **attn_kw)[..., : n - w]
        else:
            attn = window_attention(queries, keys, scaling=scaling, key_mask=key_mask, softcap=softcap)
        if self.metric_mode == "after":
            if attn is not None:
                a = temporal(attn[..., : n - w], self.temporal, self.alpha)  # [b,H,n-w]
            # per KV group, so the values are broadcast to the group's query heads, not copied
            b, kv = values.shape[:2]
            grouped_a = a.view(b, kv, heads // kv, n - w)
            prefix_v = values[..., : n - w, :].float()[:, :, None]  # [b,Hkv,1,n-w,d]
            o = torch.einsum("bkgl,bkxld->bkgd", grouped_a, prefix_v)
            norm = output_error_norm(o, prefix_v, gram).view(b, heads, n - w)
            if self.tau != 1:  # x ** 1.0 is x: skip the pass
                norm = norm**self.tau
            scores = odds_times_norm(a, norm)
        else:
            v = repeat_kv(values, heads // values.shape[1]).float()  # [b,H,n,d]
            scores = temporal(self._per_query_scores(attn, v, gram), self.temporal, self.alpha)
        valid = key_mask[:, : n - w] if key_mask is not None else None
        return self._smooth(scores, attn, budget, valid)

    def _per_query_scores(self, attn, v, gram):
        """``A[t,j]/(1-A[t,j]) * ||W_o (o_t - v_j)||`` for each window query ``t``: ``[b,H,w,n-w]``.

        ``||W(o_t - v_j)||^2 = o_t.G.o_t - 2 o_t.G.v_j + v_j.G.v_j``, expanded in float64 to avoid
        a ``[w, n, d]`` difference tensor without losing precision to cancellation.
        """
        n, w = attn.shape[-1], attn.shape[-2]
        o = attn @ v  # [b,H,w,d]: each window query's actual output over all n tokens
        prefix_v = v[..., : n - w, :].double()
        o = o.double()
        og, vg = o, prefix_v
        if gram is not None:
            og = torch.einsum("bhtd,hde->bhte", o, gram.double())
            vg = torch.einsum("bhld,hde->bhle", prefix_v, gram.double())
        quad = (og * o).sum(-1)[..., None] - 2 * og @ prefix_v.transpose(-1, -2) + (vg * prefix_v).sum(-1)[..., None, :]
        norm = quad.clamp_min(0).sqrt().float()
        return odds_times_norm(attn[..., : n - w], norm)

    def _smooth(self, scores, attn, budget, valid):
        if self.pooling == "adaptive":
            return adaptive_pool(scores, attn, budget - attn.shape[-2], self.kernel_size, self.scale, valid)
        return pool(scores, self.pooling, self.kernel_size, valid)
