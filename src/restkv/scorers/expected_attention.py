"""Expected Attention: the attention that future queries are expected to pay, estimated without them.

Follows NVIDIA ``kvpress``'s ``ExpectedAttentionPress`` (Devoto et al., "Expected Attention:
KV Cache Compression by Estimating Attention from Future Queries Distribution", 2025, arXiv
2510.00636). The prompt's queries before rotary embedding (all but the first ``sinks``) give a
mean ``mu`` and covariance ``S`` per head; the rotation averaged over the next
``future_positions`` positions, ``R``, moves them to where future queries will be. If a future
query is Gaussian, its expected attention logit to a key ``k`` is
``s * k.(R mu) + s^2/2 * k^T (R S R^T) k`` (``s`` the logit scale), and the score is the softmax
of that over the non-sink keys, averaged over a GQA group's heads, times the value norm. The
first ``sinks`` keys are always kept. The question is never read: the method is query-agnostic.

The scorer is handed the post-RoPE queries of the whole prompt and undoes their rotation with
the layer's rotary frequencies, so it must know their positions: the prompt is compressed in
one prefill (by the press or the evaluation engine), with as many queries as keys, and a row's
left padding takes no position (as ``generate`` numbers a padded batch). Chunked prefill and
decoding-time eviction see compressed keys at positions it cannot know, so presses refuse
them (``one_prefill_only``). Rotary embeddings that scale their output (YaRN, LongRoPE) are
not undone; the supported families scale by 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_int
from .base import Scorer


@dataclass
class ExpectedAttentionScorer(Scorer):
    """Expected attention of Gaussian future queries, times the value norm (``use_vnorm``)."""

    sinks: int = 4
    future_positions: int = 512
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    name = "expected_attention"
    query_span = "all"
    needs_rotary = True
    one_prefill_only = True

    def __post_init__(self):
        super().__post_init__()
        check_int("sinks", self.sinks, 0)
        check_int("future_positions", self.future_positions, 1)
        if not isinstance(self.epsilon, (int, float)) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a non-negative number, got {self.epsilon!r}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, inv_freq, **context):
        """Per-query-head scores ``[b, H, n - window]``: the attention each key would get from the
        queries expected over the next ``future_positions`` positions (their mean and covariance,
        estimated from every prompt query after the sinks), times the value norm; sinks score highest."""
        b, kv_heads, n, d = keys.shape
        if queries.shape[-2] != n:
            raise ValueError(
                f"{self.name} needs the queries of every key ({n}), got {queries.shape[-2]}: it compresses a "
                "prompt in one prefill (no chunk_size)"
            )
        real = torch.ones(b, n, dtype=torch.bool, device=keys.device) if key_mask is None else key_mask.to(keys.device)
        # left padding takes no position (the positions generate() gives a padded batch), so a
        # padded row is scored as when it runs alone
        positions = (real.long().cumsum(-1) - 1).clamp_min(0)
        sink = real & (positions < self.sinks)
        mean, cov = self.query_statistics(queries, positions, real & ~sink, real.sum(-1), inv_freq)
        scale = d**-0.5 if scaling is None else scaling
        group = queries.shape[1] // kv_heads
        k = keys.float().repeat_interleave(group, dim=1)  # [b, H, n, d]
        logits = scale * (k @ mean[..., None])[..., 0]
        if cov is not None:
            logits = logits + scale**2 / 2 * ((k @ cov) * k).sum(-1)
        scores = logits.masked_fill(~(real & ~sink)[:, None, :], float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        if self.use_vnorm:
            scores = (scores + self.epsilon) * values.float().norm(dim=-1).repeat_interleave(group, dim=1)
        # the sinks are always kept: above every other score, and finite like them
        top = scores.masked_fill(sink[:, None, :], float("-inf")).amax(dim=-1, keepdim=True).clamp_min(0)
        scores = torch.where(sink[:, None, :], top + 1, scores)
        return scores[..., : n - min(self.window_size, n)]

    def remember(self, queries, keys, kept, context):
        """Refused: the method scores one prefill from every query; it has no rule while decoding."""
        raise ValueError(f"{self.name} has no decoding-time rule: use it without decode_budget")

    def query_statistics(self, queries, positions, used, start, inv_freq):
        """Mean ``[b, H, d]`` and covariance ``[b, H, d, d]`` (None without ``use_covariance``) of
        the ``used`` queries before rotary embedding (``positions`` ``[b, n]`` their positions),
        moved to the ``future_positions`` after ``start`` ``[b]``."""
        inv_freq = inv_freq.to(queries.device).float()
        plain = _rotate(queries.float(), -positions, inv_freq)  # undo the rotary embedding
        weight = used[:, None, :, None].to(plain.dtype)
        count = weight.sum(dim=-2, keepdim=True).clamp_min(1)
        mean = (plain * weight).sum(dim=-2, keepdim=True) / count
        cov = None
        if self.use_covariance:
            centred = (plain - mean) * weight
            cov = centred.transpose(-1, -2) @ centred / count
        cos, sin = self.average_rotation(start, inv_freq)  # [b, d]
        mean = mean[..., 0, :]
        moved = mean * cos[:, None] + _rotate_half(mean) * sin[:, None]
        if cov is not None:
            rotation = torch.diag_embed(cos) + sin[..., None] * _rotate_half_matrix(cos.shape[-1], cos.device)
            rotation = rotation[:, None]  # [b, 1, d, d]
            cov = rotation @ cov @ rotation.transpose(-1, -2)
        return moved, cov

    def average_rotation(self, start: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary cosines and sines ``[b, d]`` averaged over positions ``start .. start + future_positions - 1``."""
        ahead = torch.arange(self.future_positions, device=inv_freq.device)
        positions = (start.to(inv_freq.device)[:, None] + ahead).float()  # [b, F]
        angles = positions[..., None] * inv_freq  # [b, F, d/2]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().mean(dim=-2), angles.sin().mean(dim=-2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary layout every supported family uses: ``(x1, x2) -> (-x2, x1)`` by halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_half_matrix(d: int, device) -> torch.Tensor:
    """The matrix ``P`` with ``P x = rotate_half(x)``."""
    return _rotate_half(torch.eye(d, device=device)).T


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x`` ``[b, H, q, d]`` rotated by ``positions`` ``[b, q]`` (negative: the rotation undone), in float32."""
    angles = positions.float()[:, None, :, None] * inv_freq.float()
    angles = torch.cat([angles, angles], dim=-1)
    return x * angles.cos() + _rotate_half(x) * angles.sin()
