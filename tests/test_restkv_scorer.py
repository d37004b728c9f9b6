"""ReST-KV's scorer against the spec, knob by knob, and hand-checkable small cases."""

import itertools

import pytest
import torch

from restkv.scorers import get_scorer, top_positions
from restkv.smoothing import adaptive_kernels, adaptive_pool, attention_drift, pool, temporal
from spec_reference import spec_pool, spec_scores, spec_select


def projected_norm(diff, gram):
    """The plain form the blocked output error replaced: ``||W_o^h diff||`` on a materialised
    difference ``[b, H, L, d]`` (``||diff||`` without ``gram``), in chunks of 8,192 tokens."""
    if gram is None:
        return diff.norm(dim=-1)
    out = torch.empty(diff.shape[:-1], dtype=torch.float32, device=diff.device)
    for start in range(0, diff.shape[-2], 8192):
        part = diff[..., start : start + 8192, :]
        quad = (torch.einsum("bhld,hde->bhle", part, gram) * part).sum(-1)
        out[..., start : start + 8192] = quad.clamp_min(0).sqrt()
    return out


def observation(heads=3, kv_heads=3, n=160, d=16, hidden=40, seed=0, batch=1):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=gen) * 1.5
    k = torch.randn(batch, kv_heads, n, d, generator=gen) * 1.5
    v = torch.randn(batch, kv_heads, n, d, generator=gen)
    wo = torch.randn(hidden, heads * d, generator=gen) / 8
    return q, k, v, wo


KNOBS = [
    dict(temporal=t, metric_mode=m, use_wo=u, pooling=p)
    for t, m, u, p in itertools.product(
        ("ema", "mean", "last"), ("after", "before"), (True, False), ("adaptive", "avgpool", "maxpool", "none")
    )
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_kept_set_equals_spec_for_every_knob(knobs):
    q, k, v, wo = observation()
    # a small scale makes the adaptive kernel and shift differ between heads
    params = dict(window_size=16, alpha=0.4, kernel_size=5, scale=3.0, **knobs)
    ours = get_scorer("restkv", **params).select(q, k, v, budget=48, o_proj=wo)
    spec = spec_select(q[0], k[0], v[0], wo, budget=48, w=16, alpha=0.4, kernel_size=5, scale=3.0, **knobs)
    assert torch.equal(ours[0], spec)


def test_paper_defaults_equal_spec():
    q, k, v, wo = observation(n=200)
    ours = get_scorer("restkv").select(q, k, v, budget=96, o_proj=wo)
    assert torch.equal(ours[0], spec_select(q[0], k[0], v[0], wo, budget=96))


def test_tau_changes_scores_as_spec():
    q, k, v, wo = observation()
    ours = get_scorer("restkv", window_size=16, tau=2.0, pooling="none").select(q, k, v, budget=40, o_proj=wo)
    spec = spec_select(q[0], k[0], v[0], wo, budget=40, w=16, pooling="none", tau=2.0)
    assert torch.equal(ours[0], spec)


def test_scores_match_spec_values():
    q, k, v, wo = observation(n=80)
    scorer = get_scorer("restkv", window_size=16, pooling="none")
    ours = scorer.score(q, k, v, budget=40, o_proj=wo)[0, :, :-16]
    spec, _ = spec_scores(q[0], k[0], v[0], wo, w=16)
    torch.testing.assert_close(ours.double(), spec, rtol=1e-4, atol=1e-7)
    assert torch.isinf(scorer.score(q, k, v, budget=40, o_proj=wo)[0, :, -16:]).all()


def test_gqa_aggregates_group_mean_and_keeps_kv_heads():
    q, k, v, wo = observation(heads=4, kv_heads=2)
    idx = get_scorer("restkv", window_size=16, scale=3.0).select(q, k, v, budget=48, o_proj=wo)
    assert idx.shape == (1, 2, 48)
    per_head, A = spec_scores(q[0], k[0].repeat_interleave(2, 0), v[0].repeat_interleave(2, 0), wo, w=16)
    pooled = spec_pool(per_head, A, pooling="adaptive", kernel_size=5, scale=3.0, budget=48, w=16)
    grouped = pooled.view(2, 2, -1).mean(1)
    expected = torch.cat([top_positions(grouped, 32), torch.arange(144, 160).expand(2, 16)], -1).sort(-1).values
    assert torch.equal(idx[0], expected)


@pytest.mark.parametrize("reduce,fn", [("max", lambda g: g.amax(1)), ("sum", lambda g: g.sum(1))])
def test_gqa_reduction_is_configurable(reduce, fn):
    q, k, v, wo = observation(heads=4, kv_heads=2)
    scorer = get_scorer("restkv", window_size=16, pooling="none", gqa_reduce=reduce)
    per_head, _ = spec_scores(q[0], k[0].repeat_interleave(2, 0), v[0].repeat_interleave(2, 0), wo, w=16)
    expected = top_positions(fn(per_head.view(2, 2, -1)), 32)
    assert torch.equal(scorer.select(q, k, v, budget=48, o_proj=wo)[0, :, :32], expected)


def test_queries_may_be_whole_prompt_or_window():
    q, k, v, wo = observation()
    scorer = get_scorer("restkv", window_size=16)
    assert torch.equal(
        scorer.select(q, k, v, budget=48, o_proj=wo), scorer.select(q[..., -16:, :], k, v, budget=48, o_proj=wo)
    )


def test_short_prompt_keeps_everything():
    q, k, v, wo = observation(n=40)
    idx = get_scorer("restkv").select(q, k, v, budget=64, o_proj=wo)
    assert torch.equal(idx[0, 0], torch.arange(40))


def test_batch_rows_are_independent():
    q, k, v, wo = observation(batch=3, seed=5)
    scorer = get_scorer("restkv", window_size=16, scale=3.0)
    together = scorer.select(q, k, v, budget=48, o_proj=wo)
    for row in range(3):
        alone = scorer.select(q[row : row + 1], k[row : row + 1], v[row : row + 1], budget=48, o_proj=wo)
        assert torch.equal(together[row], alone[0])


# -- hand-checkable pieces -------------------------------------------------------------------


def test_temporal_rules_by_hand():
    x = torch.tensor([[1.0], [2.0], [4.0]])  # three queries, one token
    assert temporal(x, "ema", alpha=0.5, dim=0).item() == pytest.approx(2.75)  # 1 -> 1.5 -> 2.75
    assert temporal(x, "mean", dim=0).item() == pytest.approx(7 / 3)
    assert temporal(x, "last", dim=0).item() == 4.0
    assert temporal(x, "ema", alpha=1.0, dim=0).item() == 4.0


def test_adaptive_kernel_and_shift_by_hand():
    kernels, shifts = adaptive_kernels(torch.tensor([0.0, 4500.0, -4500.0, 10000.0, -1.0, -10000.0]), 5, 2000.0)
    assert kernels.tolist() == [5, 5, 5, 11, 5, 11]
    # floor(t/scale) for t > 0, floor(t/scale) + 1 otherwise (so t = 0 shifts by one)
    assert shifts.tolist() == [1, 2, -2, 5, 0, -4]


def test_attention_drift_by_hand():
    attn = torch.zeros(1, 1, 4, 10)
    attn[..., :2, 7] = 1.0  # first half looks at position 7
    attn[..., 2:, 3] = 1.0  # second half at position 3
    assert attention_drift(attn, top=1).item() == pytest.approx(4.0)


@pytest.mark.parametrize("w, n, top", [(8, 50, 1), (16, 300, 40), (7, 120, 119), (32, 2000, 900)])
def test_attention_drift_is_the_rank_aligned_mean_of_the_method(w, n, top):
    """The unsorted index sums give the method's mean of rank-by-rank differences."""
    attn = torch.softmax(torch.randn(2, 3, w, n, generator=torch.Generator().manual_seed(n)) * 4, dim=-1)
    half = w // 2
    first = attn[..., :half, :].topk(top, dim=-1).indices  # sorted: rank r against rank r
    second = attn[..., w - half :, :].topk(top, dim=-1).indices
    expected = (first - second).double().mean(dim=(-2, -1))
    assert torch.allclose(attention_drift(attn, top).double(), expected, rtol=0, atol=1e-4)


def test_adaptive_pool_replicate_padding_by_hand():
    attn = torch.zeros(1, 1, 4, 10)
    attn[..., :2, 5] = 1.0
    attn[..., 2:, 4] = 1.0  # drift +1: with scale 1, kernel 3 and shift 1
    scores = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    out = adaptive_pool(scores, attn, top=1, kernel_size=3, scale=1.0)
    # padding 0 left, 2 right (replicated 5s): [1,2,3,4,5,5,5] averaged by 3
    torch.testing.assert_close(out[0, 0], torch.tensor([2.0, 3.0, 4.0, 14 / 3, 5.0]))


def test_symmetric_pooling_by_hand():
    scores = torch.tensor([[[3.0, 0.0, 0.0, 6.0, 0.0]]])
    torch.testing.assert_close(pool(scores, "avgpool", 3)[0, 0], torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]))
    torch.testing.assert_close(pool(scores, "maxpool", 3)[0, 0], torch.tensor([3.0, 3.0, 6.0, 6.0, 6.0]))
    assert torch.equal(pool(scores, "none"), scores)


def test_after_mode_by_hand():
    # one head, d=1, window of 1 query: attention and values chosen by hand
    q = torch.zeros(1, 1, 4, 1)
    k = torch.zeros(1, 1, 4, 1)  # uniform attention: 1/4 on each of the 4 tokens
    v = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(1, 1, 4, 1)
    scorer = get_scorer("restkv", window_size=1, pooling="none", use_wo=False)
    s = scorer.score(q, k, v, budget=2)[0, 0, :3]
    # prefix weights a = 1/4 each (not renormalised); o = (1+2+3)/4 = 1.5; odds = 1/3
    expected = torch.tensor([0.5, 0.5, 1.5]) / 3
    torch.testing.assert_close(s, expected)


def test_saturated_attention_in_float16_is_finite_and_ranks_first():
    n, d = 64, 8
    q = torch.zeros(1, 1, n, d, dtype=torch.float16)
    q[..., 0] = 30.0
    k = torch.randn(1, 1, n, d, dtype=torch.float16) * 0.01
    k[0, 0, 10, 0] = 60.0  # token 10 takes (numerically) all of the attention: logit gap ~ 1800/sqrt(8)
    v = torch.randn(1, 1, n, d, dtype=torch.float16)
    wo = torch.randn(16, d, dtype=torch.float16)
    for mode in ("after", "before"):
        scorer = get_scorer("restkv", window_size=8, pooling="none", metric_mode=mode)
        scores = scorer.score(q, k, v, budget=16, o_proj=wo)[0, 0, :-8]
        assert torch.isfinite(scores).all()
        assert scores.argmax().item() == 10
        assert 10 in scorer.select(q, k, v, budget=9, o_proj=wo)[0, 0].tolist()
        pooled = get_scorer("restkv", window_size=8, metric_mode=mode).score(q, k, v, budget=16, o_proj=wo)
        assert torch.isfinite(pooled[0, 0, :-8]).all()


# -- the cheaper paths give exactly what the plain ones give ---------------------------------


def _rows(kind: str, rows: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.softmax(torch.randn(rows, n, generator=gen) * (6.0 if kind == "peaky" else 1.0), dim=-1)
    if kind == "ties":  # many exact ties, some of them at the top-k boundary
        x = (x * 50).round() / 50
    elif kind == "special":
        x[0, :] = 0.0  # all equal
        x[1, 5] = float("nan")
        x[2, ::3] = float("-inf")
        x[3, :40] = 1.0  # more maxima than k
    return x


@pytest.mark.parametrize("kind", ["plain", "peaky", "ties", "special"])
@pytest.mark.parametrize("n, k", [(4096, 96), (4093, 96), (2053, 32), (1000, 15), (700, 100), (50, 49)])
def test_top_index_sums_equal_torch_topk(kind, n, k):
    from restkv.smoothing import top_index_sums

    x = _rows(kind, 12, n, seed=n + k)
    expected = x.topk(k, dim=-1, sorted=False).indices.sum(dim=-1)
    assert torch.equal(top_index_sums(x, k), expected)


def test_top_index_sums_skip_the_full_top_k_when_the_set_is_unique(monkeypatch):
    """The two-step path really runs: no top-k over whole rows for tie-free rows, but one for a tied row."""
    from restkv.smoothing import top_index_sums

    x = _rows("peaky", 8, 4093, seed=3)
    x[5, 100:110] = x[5].topk(96).values[-1]  # row 5: its 96th value repeated, a tie at the boundary
    expected = x.topk(96, dim=-1, sorted=False).indices.sum(dim=-1)
    widths = []
    original = torch.Tensor.topk

    def spy(self, *args, **kwargs):
        widths.append((self.shape[0], self.shape[-1]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    assert torch.equal(top_index_sums(x, 96), expected)
    assert (1, 4093) in widths  # the tied row alone went the full way
    assert (8, 4093) not in widths


@pytest.mark.parametrize("use_gram", [True, False])
def test_blocked_output_error_equals_the_unblocked_form(monkeypatch, use_gram):
    import restkv.scorers.restkv as restkv_scorer

    gen = torch.Generator().manual_seed(1)
    b, kv, g, length, d = 2, 2, 3, 301, 16
    o = torch.randn(b, kv, g, d, generator=gen)
    prefix_v = torch.randn(b, kv, 1, length, d, generator=gen)
    gram = restkv_scorer.head_gram(torch.randn(40, kv * g * d, generator=gen), kv * g) if use_gram else None
    diff = (o[..., None, :] - prefix_v).reshape(b, kv * g, length, d)
    expected = projected_norm(diff, gram).view(b, kv, g, length)
    monkeypatch.setattr(restkv_scorer, "_BLOCK_ELEMENTS", 2 * kv * g * d * 40)  # blocks of 40: a short last one
    assert torch.equal(restkv_scorer.output_error_norm(o, prefix_v, gram), expected)


def test_adaptive_pool_with_one_kernel_for_all_heads_equals_pooling_head_by_head():
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(2, 3, 90, generator=gen)
    attn = torch.softmax(torch.randn(2, 3, 8, 98, generator=gen), dim=-1)
    kernels, shifts = adaptive_kernels(attention_drift(attn, 20), 5, 2000.0)
    assert (kernels == 5).all() and len(set(shifts.flatten().tolist())) == 1  # one (kernel, shift) pair
    k, s = 5, shifts.flatten()[0].item()
    expected = torch.stack([
        torch.stack([F.avg_pool1d(F.pad(row[None, None], (k // 2 - s, k // 2 + s), mode="replicate"), k, 1)[0, 0]
                     for row in batch]) for batch in scores
    ])  # fmt: skip
    assert torch.equal(adaptive_pool(scores, attn, 20, 5, 2000.0), expected)


@pytest.mark.parametrize("rule", ["ema", "mean", "last"])
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_reduced_window_attention_is_the_temporal_reduction_of_the_whole_map(rule, softcap):
    from restkv.attention import reduced_window_attention, window_attention

    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 6, 300, 16, generator=gen) * 2, torch.randn(2, 2, 420, 16, generator=gen) * 2
    mask = torch.ones(2, 420, dtype=torch.bool)
    mask[1, :25] = False  # a left-padded row
    whole = temporal(window_attention(q, k, key_mask=mask, softcap=softcap), rule, 0.4)
    reduced = reduced_window_attention(q, k, rule, 0.4, key_mask=mask, softcap=softcap, chunk=64)  # a short last chunk
    assert torch.allclose(reduced, whole, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("temporal_rule", ["ema", "mean"])
def test_a_probe_sized_window_keeps_what_the_whole_map_kept(temporal_rule):
    """A window of REDUCE_FROM queries or more is reduced chunk by chunk (the map is never held
    whole); the kept entries are those of the one-shot path."""
    import restkv.scorers.restkv as restkv_scorer

    q, k, v, wo = observation(heads=6, kv_heads=2, n=1400)
    scorer = get_scorer("restkv", window_size=700, temporal=temporal_rule, pooling="avgpool", kernel_size=15)
    assert 700 >= restkv_scorer.REDUCE_FROM
    chunked = scorer.select(q, k, v, budget=900, o_proj=wo)
    with restkv_scorer.whole_attention_map():  # the one-shot path
        assert torch.equal(chunked, scorer.select(q, k, v, budget=900, o_proj=wo))
