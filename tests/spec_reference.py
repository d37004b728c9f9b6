"""ReST-KV written out loop by loop from method.md, for one batch row and H == H_kv.

Deliberately naive and independent of the library: every step is the spec's sentence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def observation_attention(q, k):
    """q [H, w, d], k [H, n, d] -> A [H, w, n] with the causal mask inside the window."""
    H, w, d = q.shape
    n = k.shape[1]
    logits = q.double() @ k.double().transpose(1, 2) / math.sqrt(d)
    for i in range(w):
        for j in range(w):
            if j > i:
                logits[:, i, n - w + j] = -math.inf
    return torch.softmax(logits, dim=-1)


def smooth_time(x, rule, alpha):
    """x [w, ...] in time order."""
    if rule == "mean":
        return x.mean(0)
    if rule == "last":
        return x[-1]
    acc = x[0]
    for t in range(1, x.shape[0]):
        acc = alpha * x[t] + (1 - alpha) * acc
    return acc


def spec_scores(q, k, v, wo, *, w, alpha=0.3, temporal="ema", metric_mode="after", use_wo=True, tau=1.0):
    """Step 1-3: [H, n - w] importance scores."""
    H, n, d = k.shape
    A = observation_attention(q[:, -w:], k)
    v = v.double()
    scores = torch.zeros(H, n - w, dtype=torch.float64)
    for h in range(H):
        W = wo.double()[:, h * d : (h + 1) * d]
        proj = (lambda x, W=W: W @ x) if use_wo else (lambda x: x)
        if metric_mode == "after":
            a = smooth_time(A[h, :, : n - w], temporal, alpha)
            o = (a[:, None] * v[h, : n - w]).sum(0)
            for j in range(n - w):
                scores[h, j] = a[j] / (1 - a[j]) * torch.linalg.norm(proj(o - v[h, j])) ** tau
        else:
            per_query = torch.zeros(w, n - w, dtype=torch.float64)
            for t in range(w):
                o_t = (A[h, t][:, None] * v[h]).sum(0)
                for j in range(n - w):
                    per_query[t, j] = A[h, t, j] / (1 - A[h, t, j]) * torch.linalg.norm(proj(o_t - v[h, j]))
            scores[h] = smooth_time(per_query, temporal, alpha)
    return scores, A


def spec_pool(scores, A, *, pooling, kernel_size, scale, budget, w):
    """Step 4 on [H, n - w] scores."""
    if pooling == "none":
        return scores
    if pooling in ("avgpool", "maxpool"):
        fn = F.avg_pool1d if pooling == "avgpool" else F.max_pool1d
        return fn(scores[:, None], kernel_size, stride=1, padding=kernel_size // 2)[:, 0]
    out = torch.empty_like(scores)
    top = budget - w
    for h in range(scores.shape[0]):
        diffs = []
        for i in range(w // 2):
            first = torch.argsort(A[h, i], descending=True)[:top]
            second = torch.argsort(A[h, w // 2 + i], descending=True)[:top]
            diffs.append((first - second).double())
        t = torch.stack(diffs).mean().item()
        k = max(kernel_size, 2 * math.floor(abs(t) / scale) + 1)
        s = math.floor(t / scale) if t > 0 else math.floor(t / scale) + 1
        padded = F.pad(scores[h][None, None], (k // 2 - s, k // 2 + s), mode="replicate")
        out[h] = F.avg_pool1d(padded, k, stride=1)[0, 0]
    return out


def spec_select(q, k, v, wo, *, budget, w=32, pooling="adaptive", kernel_size=5, scale=2000.0, **knobs):
    """Step 5: sorted kept positions [H, budget] for one batch row."""
    n = k.shape[1]
    scores, A = spec_scores(q, k, v, wo, w=w, **knobs)
    pooled = spec_pool(scores, A, pooling=pooling, kernel_size=kernel_size, scale=scale, budget=budget, w=w)
    # ties go to the more recent position
    kept = torch.tensor([sorted(range(n - w), key=lambda j: (-row[j].item(), -j))[: budget - w] for row in pooled])
    window = torch.arange(n - w, n).expand(k.shape[0], w)
    return torch.cat([kept, window], dim=-1).sort(dim=-1).values
