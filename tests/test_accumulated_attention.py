"""H2O's accumulated attention, computed in causal chunks on grouped heads, against the dense form."""

import pytest
import torch

from restkv.attention import accumulated_attention, repeat_kv


def dense_accumulated(queries, keys, key_mask=None, softcap=None):
    """Every query's causal softmax over every key, as one [q, n] matrix per head, summed over queries."""
    q, n, d = queries.shape[-2], keys.shape[-2], queries.shape[-1]
    keys = repeat_kv(keys, queries.shape[1] // keys.shape[1])
    logits = queries.double() @ keys.double().transpose(-1, -2) / d**0.5
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    query_pos = torch.arange(n - q, n)[:, None]
    logits = logits.masked_fill(torch.arange(n)[None, :] > query_pos, float("-inf"))
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        logits = logits.masked_fill(~key_mask[:, None, n - q :, None], float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0).sum(-2)


@pytest.mark.parametrize("n, q", [(700, 700), (700, 300), (40, 1), (600, 9)])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_grouped_attention_equals_the_dense_sum(n, q, masked):
    torch.manual_seed(n + q)
    queries, keys = torch.randn(2, 6, q, 16), torch.randn(2, 2, n, 16)  # 3 query heads per KV head
    key_mask = None
    if masked:  # left padding on the second row
        key_mask = torch.ones(2, n, dtype=torch.bool)
        key_mask[1, : n // 3] = False
    got = accumulated_attention(queries, keys, key_mask=key_mask, softcap=20.0 if masked else None)
    want = dense_accumulated(queries, keys, key_mask, softcap=20.0 if masked else None)
    assert got.shape == (2, 6, n)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_every_query_spends_one_unit_of_attention():
    queries, keys = torch.randn(1, 4, 513, 8), torch.randn(1, 4, 513, 8)
    total = accumulated_attention(queries, keys)
    torch.testing.assert_close(total.sum(-1), torch.full((1, 4), 513.0), rtol=1e-5, atol=1e-3)
