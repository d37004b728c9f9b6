"""ReST-KV's kept sets pinned on fixed tensors: a faster scorer must keep exactly the same indices.

The fixture ``fixtures/restkv_kept_sets.pt`` was written by the scorer as it stood before its
prefill work was made cheaper (issue 19, commit a1a45cf; the ``long-gqa-batch2`` cases were
added afterwards, generated with that commit's code); any change of arithmetic that moves a single kept
index on these cases fails here. The cases cover GQA, batches with left padding, odd and even
windows, every temporal rule and metric mode, every pooling (adaptive with kernels that differ
between heads), ``use_wo`` on and off, bfloat16 inputs, exact ties (duplicated tokens) and
attention sharp enough to saturate or underflow to zero.

Regenerate (only when the kept sets are meant to change, and say why in the commit):

    .venv/bin/python tests/test_restkv_kept_sets.py

(with ``PYTHONPATH`` pointing at another checkout's ``src`` it records that code's kept sets).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from restkv.scorers import get_scorer

FIXTURE = Path(__file__).parent / "fixtures" / "restkv_kept_sets.pt"

KNOBS = [
    dict(temporal=t, metric_mode=m, use_wo=u, pooling=p)
    for t, m, u, p in itertools.product(
        ("ema", "mean", "last"), ("after", "before"), (True, False), ("adaptive", "avgpool", "maxpool", "none")
    )
]
#: beyond the knob grid: the other parameters, once each on the paper's setting
EXTRAS = [
    dict(gqa_reduce="max"),
    dict(gqa_reduce="sum"),
    dict(tau=2.0),
    dict(alpha=0.7),
    dict(kernel_size=3),
    dict(kernel_size=9, pooling="maxpool"),
    dict(scale=2000.0),  # the paper's scale: kernel 5, no shift at these lengths
]

#: name -> (heads, kv_heads, n, d, hidden, batch, window, budget, adaptive scale, how the tensors are made)
SHAPES = {
    "mha": (3, 3, 160, 16, 40, 1, 16, 48, 1.0, "plain"),
    "gqa-batch2": (6, 2, 257, 32, 96, 2, 16, 64, 1.5, "plain"),
    "smollm2": (9, 3, 600, 64, 576, 1, 32, 128, 4.0, "plain"),
    "padded-batch3": (4, 2, 200, 16, 48, 3, 16, 40, 1.5, "padded"),
    "ties-sharp-odd-window": (4, 2, 300, 16, 32, 2, 9, 50, 2.0, "ties"),
    "bfloat16": (6, 3, 256, 32, 64, 1, 16, 64, 1.0, "bf16"),
    # long enough (n >= 32 (k + 1)) for the drift's two-step top-k, with a short last block
    "long-gqa-batch2": (4, 2, 2053, 16, 32, 2, 16, 48, 1.0, "plain"),
}
#: shapes pinned with adaptive pooling only (what their length adds is the drift's fast top-k)
ADAPTIVE_ONLY = ("long-gqa-batch2",)
#: fixed per shape, so that adding a shape never changes another's tensors
SEEDS = {"bfloat16": 11, "gqa-batch2": 12, "mha": 13, "padded-batch3": 14, "smollm2": 15,
         "ties-sharp-odd-window": 16, "long-gqa-batch2": 17}  # fmt: skip


def case_tensors(name: str):
    """Seeded ``q, k, v, o_proj, key_mask`` for one shape."""
    heads, kv_heads, n, d, hidden, batch, *_, kind = SHAPES[name]
    gen = torch.Generator().manual_seed(SEEDS[name])
    q = torch.randn(batch, heads, n, d, generator=gen) * 1.5
    k = torch.randn(batch, kv_heads, n, d, generator=gen) * 1.5
    v = torch.randn(batch, kv_heads, n, d, generator=gen)
    wo = torch.randn(hidden, heads * d, generator=gen) / 8
    mask = None
    if kind == "padded":
        mask = torch.ones(batch, n, dtype=torch.bool)
        for row, pad in enumerate((0, 17, 60)[:batch]):
            mask[row, :pad] = False
    elif kind == "ties":
        # duplicated tokens give exactly equal scores; sharp queries make attention saturate
        # on some heads and underflow to exactly zero on many keys
        k[..., 40:80, :] = k[..., 0:40, :]
        v[..., 40:80, :] = v[..., 0:40, :]
        k[..., 120:125, :] = k[..., 119:120, :]
        v[..., 120:125, :] = v[..., 119:120, :]
        q = q * 6
    elif kind == "bf16":
        q, k, v, wo = (t.to(torch.bfloat16) for t in (q, k, v, wo))
    return q, k, v, wo, mask


def cases():
    """``(case id, shape name, scorer params, budget)`` for every pinned case."""
    out = []
    for name, (*_, window, budget, scale, _kind) in SHAPES.items():
        base = dict(window_size=window, alpha=0.4, kernel_size=5, scale=scale)
        for knobs in KNOBS:
            if name in ADAPTIVE_ONLY and knobs["pooling"] != "adaptive":
                continue
            params = {**base, **knobs}
            out.append((f"{name}:" + "-".join(str(v) for v in knobs.values()), name, params, budget))
        for extra in EXTRAS:
            params = {**base, **extra}
            out.append((f"{name}:" + "-".join(f"{k}={v}" for k, v in extra.items()), name, params, budget))
    return out


def kept_sets() -> dict[str, torch.Tensor]:
    """The current scorer's kept positions for every case (int16)."""
    tensors = {name: case_tensors(name) for name in SHAPES}
    result = {}
    for case_id, name, params, budget in cases():
        q, k, v, wo, mask = tensors[name]
        kept = get_scorer("restkv", **params).select(q, k, v, budget=budget, o_proj=wo, key_mask=mask)
        result[case_id] = kept.to(torch.int16)
    return result


@pytest.fixture(scope="module")
def pinned():
    return torch.load(FIXTURE)


@pytest.fixture(scope="module")
def current():
    return kept_sets()


def test_fixture_covers_every_case(pinned):
    assert sorted(pinned) == sorted(case_id for case_id, *_ in cases())


@pytest.mark.parametrize("case_id", [c[0] for c in cases()])
def test_kept_set_is_unchanged(case_id, pinned, current):
    assert torch.equal(current[case_id], pinned[case_id]), f"{case_id}: kept indices moved"


def test_cases_exercise_varied_adaptive_kernels():
    """The pinned cases are only worth something if adaptive pooling really varies by head."""
    from restkv.attention import window_attention
    from restkv.smoothing import adaptive_kernels, attention_drift

    for name in SHAPES:
        q, k, _, _, mask = case_tensors(name)
        *_, window, budget, scale, _ = SHAPES[name]
        attn = window_attention(q[..., -window:, :], k, key_mask=mask)
        kernels, shifts = adaptive_kernels(attention_drift(attn, budget - window), 5, scale)
        assert len(set(zip(kernels.flatten().tolist(), shifts.flatten().tolist()))) >= 2, name
        assert kernels.max() > 5, name


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(kept_sets(), FIXTURE)
    print(f"wrote {len(cases())} kept sets to {FIXTURE}")
