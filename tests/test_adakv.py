"""AdaKV: per-head budgets stored without padding, decoded over exactly the kept entries."""

import pytest
import torch

from restkv import get_press
from restkv.cache import VarlenLayer, cache_bytes, cache_entries
from restkv.select import head_adaptive_counts, head_adaptive_positions
from test_press import hand_masked_logits, prefill
from tiny_models import prompt_ids, tiny_model

W = 8


def test_counts_share_the_layer_total_with_a_floor():
    scores = torch.zeros(1, 4, 50)
    scores[0, 0] = 10.0  # head 0 wins every joint comparison
    counts = head_adaptive_counts(scores, per_head=10, floor=0.2)
    assert counts.sum().item() == 40
    assert counts[0, 1:].tolist() == [2, 2, 2] and counts[0, 0].item() == 34  # floor 0.2 * 10 = 2 each
    assert head_adaptive_counts(scores, per_head=10, floor=1.0)[0].tolist() == [10, 10, 10, 10]


def test_positions_are_sorted_include_the_window_and_match_lengths():
    torch.manual_seed(0)
    scores = torch.rand(2, 3, 40)
    positions, lengths = head_adaptive_positions(scores, budget=12, window=4, floor=0.2)
    assert lengths.sum(-1).tolist() == [36, 36]
    for b in range(2):
        for h in range(3):
            row = positions[b, h, : lengths[b, h]]
            assert (row.diff() > 0).all() and row[-4:].tolist() == [36, 37, 38, 39]
            prefix = row[:-4]
            best = scores[b, h, :36].topk(len(prefix)).indices.sort().values
            assert torch.equal(prefix, best)


def per_head_kept(full_keys, layer: VarlenLayer):
    """Full-cache positions of each head's kept keys, padded by repeating the last one."""
    dense = layer.keys
    rows = []
    for h in range(dense.shape[1]):
        keys = dense[0, h, : layer.lengths[0, h]]
        dist = (keys[:, None, :] - full_keys[0, h][None]).abs().sum(-1)
        assert (dist.min(-1).values == 0).all()
        pos = dist.argmin(-1)
        rows.append(torch.cat([pos, pos[-1:].expand(layer.width - len(pos))]))
    return torch.stack(rows)[None]


@pytest.mark.parametrize("method,params", [("adakv", {}), ("restkv", {"allocator": "adakv"})])
@pytest.mark.parametrize("family,kv_heads", [("llama", 4), ("qwen3", 2), ("gemma3_text", 2)])
def test_adakv_stores_the_allocated_total_and_decodes_over_kept_entries(method, params, family, kv_heads):
    model = tiny_model(family, kv_heads=kv_heads)
    ids = prompt_ids(100)
    full, _ = prefill(model, ids)
    press = get_press(method, budget=30, window_size=W, **params)
    compressed, logits = prefill(model, ids, press)
    kept = {}
    for i, layer in enumerate(compressed.layers):
        if getattr(full.layers[i], "is_sliding", False):
            continue
        assert isinstance(layer, VarlenLayer)
        assert layer.stored_elements() == 30 * kv_heads * 16, "exactly the allocated total, no padding stored"
        assert layer.flat_keys.shape == (30 * kv_heads, 16)
        kept[i] = per_head_kept(full.layers[i].keys, layer)
    assert any(len(set(layer.lengths[0].tolist())) > 1 for layer in compressed.layers if isinstance(layer, VarlenLayer))
    assert press.last_stats.kept_entries == 30 * kv_heads * len(kept)
    token = logits[:, -1:].argmax(-1)
    with torch.no_grad(), press(model):
        ours = model(token, cache=compressed, position_ids=torch.tensor([[100]]), use_cache=True).logits[:, -1]
    torch.testing.assert_close(ours, hand_masked_logits(model, ids, full, kept, token), rtol=1e-4, atol=1e-4)


def test_adakv_cache_measures_and_generation():
    model = tiny_model("llama")
    ids = prompt_ids(100)
    press = get_press("adakv", budget=30, window_size=W)
    compressed, _ = prefill(model, ids, press)
    assert cache_entries(compressed) == 30 * 2 * 3
    assert cache_bytes(compressed) == 30 * 2 * 3 * 16 * 4 * 2
    with press(model):
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == 105
