"""Block-aligned selection: whole blocks shared by a layer's KV heads, the window's blocks always kept."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.blocks import block_positions, block_scores, union_rank
from restkv.generation import greedy_decode
from restkv.scorers import get_scorer, top_positions
from tiny_models import FAMILIES, prompt_ids, tiny_model

INF = float("inf")


def blocks_of(positions, block_size):
    return sorted({int(p) // block_size for p in positions})


def test_block_scores_sum_and_max_by_hand():
    scores = torch.tensor([[[1.0, 2.0, 5.0, 0.0, 3.0, 3.0, 9.0]]])  # 7 tokens, block 2: 3 whole blocks + 1
    assert block_scores(scores, 2, "sum").tolist() == [[[3.0, 5.0, 6.0]]]
    assert block_scores(scores, 2, "max").tolist() == [[[2.0, 5.0, 3.0]]]
    padded = torch.tensor([[[-INF, -INF, -INF, 4.0]]])
    assert block_scores(padded, 2, "sum").tolist() == [[[-INF, 4.0]]]  # padding adds nothing
    assert block_scores(padded, 2, "max").tolist() == [[[-INF, 4.0]]]


def test_hand_checked_selection_one_head():
    # 12 tokens, blocks of 2, window 2 -> tail = tokens 10, 11; candidates: blocks 0..4
    scores = torch.tensor([[[0.0, 1.0, 9.0, 9.0, 0.0, 0.0, 5.0, 0.0, 1.0, 1.0, INF, INF]]])
    kept = block_positions(scores, budget=6, window=2, block_size=2, reduce="sum")
    assert kept.tolist() == [[[2, 3, 6, 7, 10, 11]]]  # blocks 1 (18) and 3 (5) beat 4 (2), 0 (1), 2 (0)
    kept = block_positions(scores, budget=6, window=2, block_size=2, reduce="max")
    assert kept.tolist() == [[[2, 3, 6, 7, 10, 11]]]
    # a budget that does not divide into blocks keeps fewer, never more
    assert block_positions(scores, budget=7, window=2, block_size=2).shape[-1] == 6


def test_sum_and_max_differ_by_hand():
    # block 0 = (4, 4) sums to 8, block 1 = (7, 0) has the larger max
    scores = torch.tensor([[[4.0, 4.0, 7.0, 0.0, INF, INF]]])
    assert block_positions(scores, 4, 2, 2, "sum").tolist() == [[[0, 1, 4, 5]]]
    assert block_positions(scores, 4, 2, 2, "max").tolist() == [[[2, 3, 4, 5]]]


def test_union_over_heads_by_rank():
    # head 0 prefers block 0 then 1; head 1 prefers block 2 then 1; scales differ wildly
    per_head = torch.tensor([[[100.0, 50.0, 0.0, 1.0], [0.0, 0.2, 0.3, 0.1]]])
    ranks = union_rank(per_head)
    # best ranks: block0 0 (head0), block2 0 (head1), block1 1 (both: sum 2), block3 2 (head0) / 2 (head 1)
    assert ranks[0, [0, 2]].sort().values.tolist() == [0, 1]
    assert ranks[0, 1].item() == 2 and ranks[0, 3].item() == 3
    # two kept blocks: each head's favourite, although head 0's scores dwarf head 1's
    scores = torch.cat([per_head.repeat_interleave(2, dim=-1), torch.full((1, 2, 2), INF)], dim=-1)
    kept = block_positions(scores, budget=6, window=2, block_size=2)
    assert kept[0, 0].tolist() == kept[0, 1].tolist() == [0, 1, 4, 5, 8, 9]


def test_tail_rule_window_and_partial_last_block():
    # n = 11, window 3, blocks of 4: the window starts at 8 -> tail = block 2 = tokens 8, 9, 10
    scores = torch.arange(11.0).view(1, 1, 11)
    kept = block_positions(scores, budget=7, window=3, block_size=4)
    assert kept.tolist() == [[[4, 5, 6, 7, 8, 9, 10]]]
    # window 4 starts at 7, inside block 1: the tail is blocks 1 and 2 (7 tokens), nothing else fits
    assert block_positions(scores, budget=7, window=4, block_size=4).tolist() == [[list(range(4, 11))]]
    with pytest.raises(ValueError, match="window rounded out to whole blocks"):
        block_positions(scores, budget=6, window=4, block_size=4)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_every_kept_set_is_whole_blocks_within_budget(seed, block_size):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(40, 300, (1,), generator=gen))
    window = int(torch.randint(0, 20, (1,), generator=gen))
    budget = int(torch.randint(window + block_size, n, (1,), generator=gen))
    scores = torch.rand(2, 4, n, generator=gen)
    kept = block_positions(scores, budget, window, block_size)
    t = max(n - window, 0) // block_size
    assert kept.shape[-1] <= budget and kept.shape[-1] > budget - block_size
    for row in kept.reshape(-1, kept.shape[-1]):
        assert row.tolist() == sorted(set(row.tolist()))
        assert set(range(t * block_size, n)) <= set(row.tolist())  # the tail (window) is kept
        for block in blocks_of(row[row < t * block_size], block_size):
            assert set(range(block * block_size, (block + 1) * block_size)) <= set(row.tolist())
    assert torch.equal(kept, kept[:, :1].expand_as(kept))  # every head keeps the same set


def test_block_size_one_single_head_is_token_selection():
    scores = torch.rand(1, 1, 50, generator=torch.Generator().manual_seed(3))
    scores[..., -4:] = INF
    assert torch.equal(block_positions(scores, 20, 4, 1), top_positions(scores, 20))


def test_scorer_scores_through_blocks_gqa():
    # 8 query heads over 2 KV heads: scores are per KV head, the kept set is shared
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 8, 8, 16, generator=gen), torch.randn(1, 2, 64, 16, generator=gen), None
    v = torch.randn(1, 2, 64, 16, generator=gen)
    scorer = get_scorer("snapkv", window_size=8)
    scores = scorer.score(q, k, v, budget=32)
    assert scores.shape == (1, 2, 64)
    kept = block_positions(scores, 32, 8, 8)
    assert kept.shape == (1, 2, 32) and torch.equal(kept[0, 0], kept[0, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_press_keeps_whole_blocks_end_to_end(family):
    model = tiny_model(family)
    ids = prompt_ids(101)
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=full, use_cache=True)
    press = get_press("restkv", budget=40, window_size=8, block_size=16)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), press(model):
        model(ids, cache=cache, use_cache=True)
    # 101 tokens, window 8: the tail starts at block 5 (token 80): 21 tokens, plus one block of 16
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False):
            continue
        assert layer.keys.shape[-2] == 37
        dist = (layer.keys[..., :, None, :] - full.layers[i].keys[..., None, :, :]).abs().sum(-1)
        positions = dist.argmin(-1)
        assert torch.all(dist.min(-1).values == 0)
        assert positions[0, 0].tolist() == positions[0, 1].tolist()  # heads share the blocks
        head = positions[0, 0].tolist()
        assert head[-21:] == list(range(80, 101)) and head[0] % 16 == 0 and head[:16] == list(range(head[0], head[0] + 16))
    assert press.last_stats.kept_entries == sum(
        37 * layer.keys.shape[1] for layer in cache.layers if not getattr(layer, "is_sliding", False)
    )


def test_press_decodes_after_block_eviction_like_generate():
    model = tiny_model("llama")
    ids = prompt_ids(90)
    press = get_press("snapkv", budget=40, window_size=8, block_size=8, block_reduce="max")
    with press(model):
        hf = model.generate(ids, max_new_tokens=8, do_sample=False)[0, 90:].tolist()
    ours, kept, *_ = greedy_decode(model, ids, press, max_new_tokens=8, eos_ids=set())
    assert ours == hf and len(hf) == 8


def test_bad_block_settings_are_one_sentence_errors():
    with pytest.raises(ValueError, match="block_size"):
        get_press("restkv", budget=64, block_size=0)
    with pytest.raises(ValueError, match="block_reduce"):
        get_press("restkv", budget=64, block_size=16, block_reduce="mean")
    with pytest.raises(ValueError, match="at least 47"):
        get_press("restkv", budget=40, window_size=32, block_size=16)
    with pytest.raises(ValueError, match="adakv"):
        get_press("restkv", budget=64, window_size=8, block_size=16, allocator="adakv")
    with pytest.raises(ValueError, match="full takes no parameters"):
        get_press("full", block_size=16)
    assert get_press("restkv", budget=64, block_size=16).params()["block_reduce"] == "sum"
