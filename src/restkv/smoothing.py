"""Smoothing of scores over time (the window's queries) and space (neighbouring positions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import is_number

TEMPORAL_RULES = ("ema", "mean", "last")
POOLINGS = ("adaptive", "avgpool", "maxpool", "none")


def temporal(x: torch.Tensor, rule: str = "ema", alpha: float = 0.3, dim: int = -2) -> torch.Tensor:
    """Reduce ``dim`` (the window's queries, in time order) to one value.

    ``ema``: ``acc = x[0]``, then ``acc = alpha * x[t] + (1 - alpha) * acc``; written as the
    equivalent weighted sum (weight ``(1-alpha)^(T-1)`` on the first query and
    ``alpha (1-alpha)^(T-1-t)`` on query ``t >= 1``) so it is one reduction, not a loop.
    ``mean``: plain mean. ``last``: the last query only.
    """
    if rule == "mean":
        return x.mean(dim=dim)
    if rule == "last":
        return x.select(dim, -1)
    weights = temporal_weights(rule, x.shape[dim], alpha, x.device)
    # a vector-matrix product over ``dim`` moved next to last: one BLAS call, and for the usual
    # ``dim=-2`` no copy of a sliced attention map (tensordot would make one)
    return torch.matmul(weights.to(x.dtype), x.movedim(dim, -2))


def temporal_weights(rule: str, steps: int, alpha: float = 0.3, device=None) -> torch.Tensor:
    """The weight of each of ``steps`` queries (in time order) in :func:`temporal`'s reduction,
    float64: what lets a caller reduce queries chunk by chunk instead of all at once."""
    if rule not in TEMPORAL_RULES:
        raise ValueError(f"temporal rule {rule!r} is not one of {', '.join(TEMPORAL_RULES)}")
    if rule == "mean":
        return torch.full((steps,), 1 / steps, dtype=torch.float64, device=device)
    if rule == "last":
        return torch.zeros(steps, dtype=torch.float64, device=device).index_fill_(0, torch.tensor([steps - 1], device=device), 1.0)
    t = torch.arange(steps, device=device, dtype=torch.float64)
    weights = alpha * (1 - alpha) ** (steps - 1 - t)
    weights[0] = (1 - alpha) ** (steps - 1)
    return weights


def fill_left_padding(scores: torch.Tensor, valid: torch.Tensor | None, replicate: bool) -> torch.Tensor:
    """Scores at a row's left padding set to what pooling's own padding would put there.

    ``valid`` is ``[b, L]`` (False at left padding). Pooling then treats a padded row exactly
    like the same row without padding: zeros for zero-padded pooling, the first real score
    for replicate padding.
    """
    if valid is None:
        return scores
    valid = valid[:, None, :].to(scores.device)
    if replicate:
        first = valid.long().argmax(dim=-1, keepdim=True).expand(-1, scores.shape[1], -1)
        fill = scores.gather(-1, first)
    else:
        fill = torch.zeros_like(scores[..., :1])
    return torch.where(valid, scores, fill)


def pool(
    scores: torch.Tensor, mode: str = "avgpool", kernel_size: int = 5, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool ``[b, H, L]`` scores along ``L`` with stride 1 and symmetric zero padding ``k//2``.

    ``valid`` (``[b, L]``, False at left padding) makes a padded row pool like the unpadded one.
    """
    if mode == "none":
        return scores
    scores = fill_left_padding(scores, valid, replicate=False)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    b, h, length = scores.shape
    flat = scores.reshape(b * h, 1, length)
    if mode == "avgpool":
        out = F.avg_pool1d(flat, kernel_size, stride=1, padding=kernel_size // 2)
    elif mode == "maxpool":
        out = F.max_pool1d(flat, kernel_size, stride=1, padding=kernel_size // 2)
    else:
        raise ValueError(f"pooling {mode!r} is not one of {', '.join(POOLINGS)}")
    return out.reshape(b, h, length)


def _block_size(n: int, need: int) -> int:
    """Block size for :func:`top_index_sums`: near ``sqrt(n / need)``, which balances its two
    top-k, and a divisor of ``n`` when one is close (then no block is short)."""
    best = max(2, round(math.sqrt(n / need)))
    near = sorted(range(max(2, best * 3 // 4), best * 3 // 2 + 1), key=lambda s: (abs(s - best), s))
    return next((s for s in near if n % s == 0), best)


def top_index_sums(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the positions of each row's ``k`` largest entries, as ``torch.topk``'s indices give it.

    ``x`` is ``[R, n]``. Where the top ``k`` of a row is one set whatever the tie rule (its
    ``k``-th value is above the next), it is found in two cheap steps instead of one full
    top-k over ``n``: the rows are cut into blocks of ``s``, the ``k + 1`` blocks with the
    largest maxima are gathered (every entry outside them is at most the smallest of those
    maxima), and a top-``k + 1`` over those ``(k + 1) s`` entries gives the top ``k`` and the
    next value. A row where the next value ties the ``k``-th, or is not above every entry left
    out, takes the full ``torch.topk``, so the sums are exactly what it would give.
    """
    rows, n = x.shape
    if k < 1:
        return x.new_zeros(rows, dtype=torch.long)
    need = k + 1
    step = _block_size(n, need)
    if n < 32 * need:  # too few entries per kept one for the two steps to gain anything
        return x.topk(k, dim=-1, sorted=False).indices.sum(dim=-1)
    whole = (n // step) * step  # the last block is short when step does not divide n
    # max pooling with stride = kernel: the same maxima as amax over [rows, blocks, step], a few
    # times faster (a reduction over a last dim of 4-8 entries runs far below vector speed)
    block_max = F.max_pool1d(x[:, None, :whole], step, step)[:, 0]
    if whole < n:
        block_max = torch.cat([block_max, x[:, whole:].amax(dim=-1, keepdim=True)], dim=-1)
    block_max, chosen = block_max.topk(need, dim=-1, sorted=False)
    floor = block_max.amin(dim=-1, keepdim=True)  # no entry outside the chosen blocks exceeds it
    at = (chosen[..., None] * step + torch.arange(step, device=x.device)).view(rows, need * step)
    candidates = x.gather(1, at.clamp_max(n - 1))
    if whole < n:  # past the end of the short block: never a candidate
        candidates.masked_fill_(at >= n, -math.inf)
    values, where = candidates.topk(need, dim=-1, sorted=False)
    low, low_at = values.min(dim=-1, keepdim=True)  # the (k+1)-th value of the row
    positions = at.gather(1, where)
    sums = positions.sum(dim=-1) - positions.gather(1, low_at)[:, 0]
    unique = (low > floor)[:, 0] & ((values == low).sum(dim=-1) == 1)  # NaN rows fail both
    if not bool(unique.all()):
        redo = (~unique).nonzero().flatten()
        sums[redo] = x[redo].topk(k, dim=-1, sorted=False).indices.sum(dim=-1)
    return sums


def attention_drift(attn: torch.Tensor, top: int) -> torch.Tensor:
    """Mean drift of the attended positions inside the observation window.

    For each head, the positions of the ``top`` most attended keys of each query in the first
    half of the window minus those of the matching query (same index within its half) in the
    second half, aligned rank by rank, averaged over queries and ranks.

    Args:
        attn: ``[b, H, w, n]`` window attention over all keys.
    Returns:
        ``[b, H]`` float drift (positive: attention moves towards earlier positions).
    """
    b, h, w, n = attn.shape
    half = w // 2
    if half == 0:  # a one-query window has no halves to compare: no drift
        return attn.new_zeros(attn.shape[:-2])
    top = max(1, min(top, n))
    # the mean of rank-aligned differences is the difference of the index sums, so the top-k
    # sets need no sorting; the sums are exact integers. One pass over all the window's rows
    # (the middle one of an odd window is not used).
    sums = top_index_sums(attn.reshape(b * h * w, n), top).view(b, h, w)
    first, second = sums[..., :half].sum(dim=-1), sums[..., w - half :].sum(dim=-1)
    return ((first - second).double() / (half * top)).to(attn.dtype)


def adaptive_kernels(drift: torch.Tensor, kernel_size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head kernel size ``max(kernel_size, 2*floor(|t|/scale)+1)`` and shift ``s``.

    ``s = floor(t/scale)`` when ``t > 0``, else ``floor(t/scale) + 1``.
    """
    steps = torch.floor(drift / scale)
    kernels = (2 * torch.floor(drift.abs() / scale) + 1).clamp(min=kernel_size).long()
    shifts = torch.where(drift > 0, steps, steps + 1).long()
    return kernels, shifts


def adaptive_pool(
    scores: torch.Tensor,
    attn: torch.Tensor,
    top: int,
    kernel_size: int = 5,
    scale: float = 2000.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """ReST-KV's adaptive window pooling, per batch row and head.

    Each head's row is replicate-padded ``k//2 - s`` on the left and ``k//2 + s`` on the right
    and average-pooled with kernel ``k``, where ``k`` and ``s`` come from the attention drift.
    Heads sharing ``(k, s)`` are pooled together.
    """
    b, h, length = scores.shape
    scores = fill_left_padding(scores, valid, replicate=True)
    kernels, shifts = adaptive_kernels(attention_drift(attn, top), kernel_size, scale)
    out = torch.empty_like(scores)
    flat_scores, flat_out = scores.reshape(b * h, length), out.view(b * h, length)
    pairs = torch.stack([kernels.flatten(), shifts.flatten()], dim=-1)
    if bool((pairs == pairs[:1]).all()):  # the usual case: every head pools alike, in one call
        k, s = pairs[0].tolist()
        padded = F.pad(flat_scores[:, None], (k // 2 - s, k // 2 + s), mode="replicate")
        return F.avg_pool1d(padded, k, stride=1).view(b, h, length)
    for k, s in pairs.unique(dim=0).tolist():
        rows = ((pairs[:, 0] == k) & (pairs[:, 1] == s)).nonzero().flatten()
        padded = F.pad(flat_scores[rows][:, None], (k // 2 - s, k // 2 + s), mode="replicate")
        flat_out[rows] = F.avg_pool1d(padded, k, stride=1)[:, 0]
    return out


def validate_alpha(alpha: float) -> float:
    if not is_number(alpha) or not 0 < alpha <= 1 or math.isnan(alpha):
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    return float(alpha)
