"""How many entries each layer keeps: explicit budgets and compression ratios, and layer allocators."""

from __future__ import annotations

import math

from .checks import is_int, is_number

#: layer allocators; ``adakv`` is uniform across layers and adaptive across the heads of each
ALLOCATORS = ("uniform", "pyramid", "adakv")


def validate_budget(budget, compression_ratio, window_size: int) -> None:
    """Exactly one of ``budget`` (tokens per head and layer) or ``compression_ratio`` (fraction removed)."""
    if (budget is None) == (compression_ratio is None):
        raise ValueError("give exactly one of budget (tokens kept per head and layer) or compression_ratio")
    if budget is not None:
        if not is_int(budget):
            raise ValueError(f"budget must be an integer number of tokens, got {budget!r}")
        if budget <= window_size:
            raise ValueError(
                f"budget ({budget}) must be larger than window_size ({window_size}): the window alone would fill it"
            )
    else:
        if not is_number(compression_ratio) or not 0 <= compression_ratio < 1:
            raise ValueError(f"compression_ratio must be a number in [0, 1), got {compression_ratio!r}")


def tokens_to_keep(n: int, budget: int | None, compression_ratio: float | None, window_size: int) -> int:
    """Entries per head kept from an ``n``-token prompt; never below the window, never above ``n``."""
    if budget is None:
        budget = max(math.ceil(n * (1 - compression_ratio)), window_size + 1)
    return min(budget, n)


def pyramid_schedule(budget: int, window_size: int, num_layers: int, n: int, beta: int = 20) -> list[int]:
    """PyramidKV's per-layer budgets: linear in depth, largest in the first layer, same total.

    Following Cai et al. (PyramidKV, arXiv 2406.02069) and its reference code, the non-window
    part goes linearly from ``2 (B - w) - (B - w) / beta`` in layer 0 down to ``(B - w) / beta``
    in the last layer, capped at the ``n - w`` prefix tokens. Unlike the reference, rounding
    is done by largest remainder so the sum over layers equals ``num_layers * B`` exactly
    (when the prompt is long enough to fill it).
    """
    if num_layers == 1:
        return [budget]
    mean = budget - window_size
    low = mean / beta
    high = 2 * mean - low
    if high > n - window_size:  # the first layers cannot keep more than the prefix
        high = n - window_size
        low = max(2 * mean - high, 0.0)
    raw = [high - (high - low) * i / (num_layers - 1) for i in range(num_layers)]
    floors = [math.floor(x) for x in raw]
    short = round(sum(raw)) - sum(floors)
    by_remainder = sorted(range(num_layers), key=lambda i: raw[i] - floors[i], reverse=True)
    for i in by_remainder[:short]:
        floors[i] += 1
    return [f + window_size for f in floors]


def layer_budgets(
    allocator: str, n: int, num_layers: int, budget: int | None, compression_ratio: float | None, window_size: int
) -> list[int]:
    """Entries kept per head in each of ``num_layers`` compressed layers for an ``n``-token prompt."""
    keep = tokens_to_keep(n, budget, compression_ratio, window_size)
    if allocator in ("uniform", "adakv") or keep >= n:
        return [keep] * num_layers
    if allocator == "pyramid":
        return [min(b, n) for b in pyramid_schedule(keep, window_size, num_layers, n)]
    raise ValueError(f"allocator must be one of {', '.join(ALLOCATORS)}, got {allocator!r}")
