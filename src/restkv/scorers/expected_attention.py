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
the layer's rotary frequencies, so query ``i`` must sit at position ``i``: the prompt is
compressed in one prefill (by the press or the evaluation engine), with as many queries as
keys. Chunked prefill (later chunks see compressed keys at unknown positions) and
decoding-time eviction have no such queries and are refused. Rotary embeddings that scale
their output (YaRN, LongRoPE) are not undone; the supported families scale by 1.
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

    def __post_init__(self):
        super().__post_init__()
        check_int("sinks", self.sinks, 0)
        check_int("future_positions", self.future_positions, 1)
        if not isinstance(self.epsilon, (int, float)) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a non-negative number, got {self.epsilon!r}")

    def prefix_scores(self, queries, keys, values, *, budget, o_proj, key_mask, scaling, softcap, inv_freq, **context):
        b, kv_heads, n, d = keys.shape
        if queries.shape[-2] != n:
            raise ValueError(
                f"{self.name} needs the queries of every key ({n}), got {queries.shape[-2]}: it compresses a "
                "prompt in one prefill (no chunk_size)"
            )
        sinks = min(self.sinks, n)
        mean, cov = self.query_statistics(queries, n, inv_freq, key_mask)
        scale = d**-0.5 if scaling is None else scaling
        k = keys[..., sinks:, :].float().repeat_interleave(queries.shape[1] // kv_heads, dim=1)  # [b, H, n-s, d]
        logits = scale * (k @ mean[..., None])[..., 0]
        if cov is not None:
            logits = logits + scale**2 / 2 * ((k @ cov) * k).sum(-1)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, sinks:].to(logits.device), float("-inf"))
        scores = logits.softmax(dim=-1)
        if self.use_vnorm:
            norms = values[..., sinks:, :].float().norm(dim=-1).repeat_interleave(queries.shape[1] // kv_heads, dim=1)
            scores = (scores + self.epsilon) * norms
        scores = torch.cat([scores.new_full((*scores.shape[:2], sinks), float("inf")), scores], dim=-1)
        return scores[..., : n - min(self.window_size, n)]

    def remember(self, queries, keys, kept, context):
        raise ValueError(f"{self.name} has no decoding-time rule: use it without decode_budget")

    def query_statistics(self, queries, n: int, inv_freq: torch.Tensor, key_mask):
        """Mean ``[b, H, d]`` and covariance ``[b, H, d, d]`` (None without ``use_covariance``) of
        the prompt's queries before rotary embedding, moved to the next ``future_positions``."""
        positions = torch.arange(n, device=queries.device)
        plain = _rotate(queries.float(), -positions, inv_freq.to(queries.device))  # undo the rotary embedding
        used = (positions >= self.sinks).to(plain.dtype)[None, None, :, None]  # sinks' queries are outliers
        if key_mask is not None:  # padding queries are no queries
            used = used * key_mask[:, None, :, None].to(plain.device, plain.dtype)
        count = used.sum(dim=-2, keepdim=True).clamp_min(1)
        mean = (plain * used).sum(dim=-2, keepdim=True) / count
        cov = None
        if self.use_covariance:
            centred = (plain - mean) * used
            cov = centred.transpose(-1, -2) @ centred / count
        cos, sin = self.average_rotation(n, inv_freq.to(plain.device))
        mean = mean[..., 0, :]
        moved = mean * cos + _rotate_half(mean) * sin
        if cov is not None:
            rotation = torch.diag(cos) + sin[:, None] * _rotate_half_matrix(cos.shape[-1], cos.device)
            cov = rotation @ cov @ rotation.T
        return moved, cov

    def average_rotation(self, start: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary cosines and sines ``[d]`` averaged over positions ``start .. start + future_positions - 1``."""
        positions = torch.arange(start, start + self.future_positions, device=inv_freq.device, dtype=torch.float32)
        angles = positions[:, None] * inv_freq.float()[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().mean(dim=0), angles.sin().mean(dim=0)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary layout every supported family uses: ``(x1, x2) -> (-x2, x1)`` by halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_half_matrix(d: int, device) -> torch.Tensor:
    """The matrix ``P`` with ``P x = rotate_half(x)``."""
    return _rotate_half(torch.eye(d, device=device)).T


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., q, d]`` rotated by ``positions`` ``[q]`` (negative: the rotation undone), in float32."""
    angles = positions.float()[:, None] * inv_freq.float()[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return x * angles.cos() + _rotate_half(x) * angles.sin()
