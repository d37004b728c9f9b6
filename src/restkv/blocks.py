"""Block-aligned selection: keep whole blocks of tokens, one kept set per layer shared by its KV heads.

A paged KV cache (transformers' ``PagedAttentionCache``, vLLM) frees memory only as whole
blocks of ``block_size`` token slots, and one block holds every KV head of a layer. Token-level
eviction keeps a different set per head, scattered over the prompt, so memory is freed only
after the kept entries are compacted. Block-aligned selection keeps whole blocks instead, the
same blocks for every KV head, as OpenVINO GenAI's ``CacheEvictionConfig`` and TensorRT-LLM's
KV-cache compression do.

The rule, for an ``n``-token prompt with observation window ``w``:

* blocks are aligned to absolute positions: block ``j`` holds tokens ``[j*bs, (j+1)*bs)``;
* the *tail* is every block that holds a window token, plus the partial last block when ``n`` is
  not a multiple of ``bs``: tokens ``[t*bs, n)`` with ``t = (n - w) // bs``. The tail is always
  kept (the window rounded out to whole blocks: up to ``w + bs - 1`` tokens). It is the one part
  of a kept set that need not be a whole number of blocks (its last block is the prompt's end,
  which the next token keeps filling);
* the ``t`` full blocks before the tail are candidates. A block's score per KV head is the
  ``sum`` or the ``max`` of its tokens' scores. The heads are united by rank: a block's rank in
  the layer is the best (smallest) rank any head gives it, ties broken by the sum of the heads'
  ranks, then by recency. So the kept blocks are the union of every head's top ``r`` blocks
  (for the largest ``r`` that fits), topped up with the next best;
* ``(budget - tail) // bs`` candidates are kept, so the kept count never exceeds ``budget``.
"""

from __future__ import annotations

import torch

from .checks import check_choice, check_int

BLOCK_REDUCTIONS = ("sum", "max")


def tail_start(n: int, window: int, block_size: int) -> int:
    """Index ``t`` of the first block of the always-kept tail (window and partial last block)."""
    return max(n - window, 0) // block_size


def block_scores(scores: torch.Tensor, block_size: int, reduce: str = "sum") -> torch.Tensor:
    """Per-head scores ``[b, H, n // block_size]`` of the whole blocks of token scores ``[b, H, n]``.

    Tokens that must never be kept (padding, ``-inf``) add nothing to a ``sum``; a block made of
    them only scores ``-inf``.
    """
    check_int("block_size", block_size, 1)
    check_choice("block_reduce", reduce, BLOCK_REDUCTIONS)
    b, heads, n = scores.shape
    blocks = scores[..., : (n // block_size) * block_size].float().reshape(b, heads, -1, block_size)
    if reduce == "max":
        return blocks.amax(dim=-1)
    banned = blocks == float("-inf")
    summed = blocks.masked_fill(banned, 0.0).sum(dim=-1)
    return summed.masked_fill(banned.all(dim=-1), float("-inf"))


def union_rank(per_head: torch.Tensor) -> torch.Tensor:
    """A layer's order of preference ``[b, m]`` (0 = keep first) from per-head block scores ``[b, H, m]``.

    Each head ranks the blocks (ties: the more recent first); a block's key is its best rank
    over the heads, then the sum of its ranks, then recency; the keys are returned as ranks.
    """
    b, heads, m = per_head.shape
    order = per_head.flip(-1).argsort(dim=-1, descending=True, stable=True)  # over flipped indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(m, device=order.device).expand(b, heads, m))
    ranks = ranks.flip(-1).double()  # ranks[b, h, j]: head h's rank of block j
    recency = torch.arange(m, device=per_head.device, dtype=torch.float64) / max(m, 1)  # in [0, 1)
    key = ranks.amin(dim=1) * (heads * m + 1) + ranks.sum(dim=1) + (1 - recency) * 0.5
    layer_order = key.argsort(dim=-1)
    out = torch.empty_like(layer_order)
    out.scatter_(-1, layer_order, torch.arange(m, device=per_head.device).expand(b, m))
    return out


def block_positions(
    scores: torch.Tensor, budget: int, window: int, block_size: int, reduce: str = "sum"
) -> torch.Tensor:
    """Kept positions ``[b, H, k]``, sorted, the same for every head: whole blocks plus the tail.

    Args:
        scores: per-KV-head token scores ``[b, H, n]`` (a scorer's ``score``; the window's are ignored).
        budget: entries kept per head at most.
        window: the observation window, always kept (rounded out to whole blocks).
        block_size: tokens per block (the paged cache's page size).
        reduce: ``sum`` or ``max`` of a block's token scores.
    Returns:
        ``k = tail + bs * min(t, (budget - tail) // bs)`` positions per head, ``k <= budget``.
    """
    check_int("budget", budget, 1)
    check_int("window", window, 0)
    b, heads, n = scores.shape
    t = tail_start(n, window, block_size)
    tail = n - t * block_size
    if tail > budget:
        raise ValueError(
            f"budget ({budget}) is smaller than the window rounded out to whole blocks ({tail} tokens: "
            f"window_size {window}, block_size {block_size}); give a budget of at least {window + block_size - 1}"
        )
    keep = min(t, (budget - tail) // block_size)
    device = scores.device
    if keep:
        ranks = union_rank(block_scores(scores[..., : t * block_size], block_size, reduce))
        chosen = (ranks < keep).nonzero()[:, 1].view(b, keep)  # ascending block indices per row
        tokens = (chosen[..., None] * block_size + torch.arange(block_size, device=device)).reshape(b, -1)
    else:
        tokens = torch.empty(b, 0, dtype=torch.long, device=device)
    tail_tokens = torch.arange(t * block_size, n, device=device).expand(b, tail)
    kept = torch.cat([tokens, tail_tokens], dim=-1)
    return kept[:, None, :].expand(b, heads, kept.shape[-1]).contiguous()


def min_block_budget(window: int, block_size: int) -> int:
    """The smallest budget that holds the window rounded out to whole blocks, for any prompt length."""
    return window + block_size - 1 if window else max(block_size - 1, 1)
