"""Observation attention: the attention that scorers read, computed apart from the model's own.

Everything here is float32 whatever the model's dtype, so that low-precision models give the
same rankings as float32 ones and no score overflows.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar

import torch

from .smoothing import temporal_weights

#: the memo :func:`sharing` installs; None outside it (every call computes)
_SHARED: ContextVar[dict | None] = ContextVar("restkv_shared_attention", default=None)


@contextlib.contextmanager
def sharing(memo: dict | None):
    """Within the block, :func:`window_attention` and :func:`accumulated_attention` computed on
    the same tensors with the same arguments are computed once and kept in ``memo``.

    The evaluation engine compresses one layer for every configuration of a sweep with one memo,
    so methods reading the same observation attention (SnapKV, PyramidKV, AdaKV, ReST-KV, at
    every budget) pay for it once. A hit is a copy of the stored result, so a caller that writes
    into its attention cannot change what the next one reads; results are those of a call
    without the memo, bit for bit. ``None`` shares nothing.
    """
    token = _SHARED.set(memo)
    try:
        yield
    finally:
        _SHARED.reset(token)


def _identity(t: torch.Tensor | None):
    """What makes two tensors the same input: same memory, layout and type (None stays None)."""
    if t is None:
        return None
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, str(t.device))


def _shared(kind: str, compute, tensors: tuple, params: tuple) -> torch.Tensor:
    """``compute()``, or a copy of its result for the same ``tensors`` and ``params`` under :func:`sharing`."""
    memo = _SHARED.get()
    if memo is None:
        return compute()
    key = ("attention", kind, tuple(_identity(t) for t in tensors), params)
    if key not in memo:
        # the inputs stay referenced, so their memory cannot be reused by other tensors meanwhile
        memo[key] = (compute(), tensors)
    return memo[key][0].clone()


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Repeat key/value heads ``[b, H_kv, n, d]`` to query heads ``[b, H_kv * groups, n, d]``."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def group_size(queries: torch.Tensor, keys: torch.Tensor) -> int:
    """Query heads per key/value head, with a clear error when the head counts do not divide."""
    heads, kv_heads = queries.shape[1], keys.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"queries have {heads} heads and keys {kv_heads}: the query head count must be a "
            "multiple of the key/value head count"
        )
    return heads // kv_heads


def _logits(queries, keys, scaling, softcap):
    scaling = 1.0 / math.sqrt(queries.shape[-1]) if scaling is None else scaling
    # scaled in place: the same products, without a second logits-sized allocation (for a
    # reconstruction probe's thousands of queries that fresh memory cost more than the matmul)
    logits = torch.matmul(queries.float(), keys.float().transpose(-1, -2)).mul_(scaling)
    if softcap:
        logits = logits.div_(softcap).tanh_().mul_(softcap)
    return logits


def window_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    scaling: float | None = None,
    key_mask: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention of the last ``q`` prompt tokens over all ``n`` keys.

    Args:
        queries: ``[b, H, q, d]`` post-RoPE queries of the last ``q`` tokens of the prompt.
        keys: ``[b, H_kv, n, d]`` post-RoPE keys of the whole prompt (``n >= q``).
        scaling: logit scale, ``1/sqrt(d)`` by default (Gemma models use their own).
        key_mask: optional ``[b, n]`` bool, False for padding keys, which get zero weight.
        softcap: optional logit soft-capping (Gemma 2).

    Returns:
        ``[b, H, q, n]`` float32 attention weights, causal inside the window: window query
        ``i`` does not see window key ``j > i``.
    """
    compute = lambda: _window_attention(queries, keys, scaling, key_mask, softcap)  # noqa: E731
    return _shared("window", compute, (queries, keys, key_mask), (scaling, softcap))


def _window_attention(queries, keys, scaling, key_mask, softcap):
    q, n = queries.shape[-2], keys.shape[-2]
    keys = repeat_kv(keys, group_size(queries, keys))
    logits = _logits(queries, keys, scaling, softcap)
    future = torch.ones(q, q, dtype=torch.bool, device=logits.device).triu(1)
    logits[..., n - q :].masked_fill_(future, float("-inf"))
    if key_mask is not None:
        logits.masked_fill_(~key_mask[:, None, None, :].to(logits.device), float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num_(0.0)


def reduced_window_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    rule: str,
    alpha: float = 0.3,
    *,
    scaling: float | None = None,
    key_mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """:func:`window_attention` reduced over its queries by the temporal ``rule`` (see
    :func:`restkv.smoothing.temporal`): ``[b, H, n]`` float32, computed ``chunk`` queries at a time.

    The same numbers as ``temporal(window_attention(...), rule, alpha)`` up to summation order,
    in ``O(chunk * n)`` memory instead of ``O(q * n)``: for a reconstruction probe's thousands of
    queries the whole map is over a gigabyte per layer, and allocating it cost more than computing it.
    """
    compute = lambda: _reduced_window_attention(queries, keys, rule, alpha, scaling, key_mask, softcap, chunk)  # noqa: E731
    return _shared("reduced", compute, (queries, keys, key_mask), (rule, alpha, scaling, softcap, chunk))


def _reduced_window_attention(queries, keys, rule, alpha, scaling, key_mask, softcap, chunk):
    b, heads, q, _ = queries.shape
    n = keys.shape[-2]
    keys = repeat_kv(keys, group_size(queries, keys))
    weights = temporal_weights(rule, q, alpha, queries.device).float()
    total = torch.zeros(b, heads, n, dtype=torch.float32, device=queries.device)
    key_pos = torch.arange(n, device=queries.device)
    for start in range(0, q, chunk):
        stop = min(start + chunk, q)
        logits = _logits(queries[..., start:stop, :], keys, scaling, softcap)  # [b, H, c, n]
        query_pos = torch.arange(n - q + start, n - q + stop, device=queries.device)
        logits.masked_fill_(key_pos[None, :] > query_pos[:, None], float("-inf"))  # causal inside the window
        if key_mask is not None:
            logits.masked_fill_(~key_mask[:, None, None, :].to(logits.device), float("-inf"))
        attn = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
        total += torch.matmul(weights[start:stop], attn)
    return total


def accumulated_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    scaling: float | None = None,
    key_mask: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Causal attention received by each key, summed over all ``q`` queries (H2O's statistic).

    The ``q`` queries are the last ``q`` tokens of the prompt. Computed in query chunks so that
    memory stays ``O(chunk * n)`` however long the prompt.

    Returns:
        ``[b, H, n]`` float32.
    """
    compute = lambda: _accumulated_attention(queries, keys, scaling, key_mask, softcap, chunk)  # noqa: E731
    return _shared("accumulated", compute, (queries, keys, key_mask), (scaling, softcap, chunk))


def _accumulated_attention(queries, keys, scaling, key_mask, softcap, chunk):
    b, heads, q, d = queries.shape
    n, kv_heads = keys.shape[-2], keys.shape[1]
    groups = group_size(queries, keys)
    total = torch.zeros(b, kv_heads, groups, n, dtype=torch.float32, device=queries.device)
    grouped = queries.reshape(b, kv_heads, groups, q, d)  # query heads as rows of their KV head: no repeated keys
    key_pos = torch.arange(n, device=queries.device)
    # chunks of at most 256 queries: each reads only the keys it can see, which skips most of
    # the causal triangle's masked half (a single 1,024-query chunk computes all of it)
    step = min(chunk, 256)
    for start in range(0, q, step):
        stop = min(start + step, q)
        seen = n - q + stop  # keys visible to the chunk's last query
        rows = grouped[..., start:stop, :].reshape(b, kv_heads, groups * (stop - start), d)
        logits = _logits(rows, keys[..., :seen, :], scaling, softcap).view(b, kv_heads, groups, stop - start, seen)
        query_pos = torch.arange(n - q + start, n - q + stop, device=queries.device)
        logits.masked_fill_(key_pos[None, :seen] > query_pos[:, None], float("-inf"))
        if key_mask is not None:
            logits.masked_fill_(~key_mask[:, None, None, None, :seen].to(logits.device), float("-inf"))
            # padding queries would spread their weight over padding-free rows; drop them
            valid_q = key_mask[:, n - q + start : n - q + stop].to(logits.device)
            logits.masked_fill_(~valid_q[:, None, None, :, None], float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0)
        else:  # every query sees at least key 0, so no row is all -inf
            probs = torch.softmax(logits, dim=-1)
        total[..., :seen] += probs.sum(dim=-2)
    return total.view(b, heads, n)
