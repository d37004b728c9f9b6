"""Scores and budgets to kept positions when heads keep different numbers of entries (AdaKV)."""

from __future__ import annotations

import torch


def head_adaptive_counts(prefix_scores: torch.Tensor, per_head: int, floor: float = 0.2) -> torch.Tensor:
    """How many prefix entries each KV head keeps when a layer's heads share one budget.

    Following AdaKV (Feng et al., arXiv 2407.11550; reference ``FFY0/AdaKV``): the
    ``H * per_head`` best scores of all heads together decide each head's share ``c_h``; every
    head is then guaranteed ``floor * per_head`` entries, as ``(1 - floor) c_h + floor * per_head``,
    rounded by largest remainder so the layer total is exactly ``H * per_head``.

    Args:
        prefix_scores: ``[b, H, L]`` scores of the evictable (non-window) entries.
        per_head: the uniform budget's prefix entries per head (``B - window``).
        floor: the guaranteed share of ``per_head`` (AdaKV's safeguard, 0.2 by default).
    Returns:
        ``[b, H]`` long counts, each ``<= L``, summing to ``H * per_head`` per row.
    """
    b, heads, length = prefix_scores.shape
    total = heads * per_head
    flat = prefix_scores.reshape(b, heads * length)
    chosen = flat.topk(total, dim=-1).indices // length
    shares = torch.zeros(b, heads, dtype=torch.float64, device=prefix_scores.device)
    shares.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=torch.float64))
    raw = (1 - floor) * shares + floor * per_head
    counts = raw.floor().long().clamp(max=length)
    short = total - counts.sum(dim=-1)
    remainder = (raw - raw.floor()).masked_fill(counts >= length, -1.0)
    order = remainder.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(heads, device=order.device).expand(b, heads))
    return counts + (ranks < short[:, None]).long()


def head_adaptive_positions(
    scores: torch.Tensor, budget: int, window: int, floor: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept positions per head, padded: ``([b, H, L_max], lengths [b, H])``.

    ``scores`` ``[b, H, n]`` cover every position (the window's scores are ignored: the last
    ``window`` positions are always kept). Row ``(b, h)`` holds its ``lengths[b, h]`` kept
    positions sorted ascending, then padding (repeats of its last position).
    """
    b, heads, n = scores.shape
    prefix = scores[..., : n - window]
    counts = head_adaptive_counts(prefix, budget - window, floor)[..., None]
    lengths = counts + window
    width = int(lengths.max())
    # each head's best prefix positions (ties: most recent first), as many as the widest head needs
    order = prefix.flip(-1).sort(dim=-1, descending=True, stable=True).indices[..., : max(width - window, 1)]
    ranked = n - window - 1 - order
    slot = torch.arange(width, device=scores.device)
    keep_ranked = torch.where(slot[: ranked.shape[-1]] < counts, ranked, n)
    from_prefix = keep_ranked.sort(dim=-1).values.gather(
        -1, slot.clamp(max=ranked.shape[-1] - 1).expand(b, heads, width)
    )
    from_window = n - window + slot - counts
    padding = torch.full_like(from_window, n - 1)
    positions = torch.where(slot < counts, from_prefix, torch.where(slot < lengths, from_window, padding))
    return positions, lengths[..., 0]
