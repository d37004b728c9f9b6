"""Which prompt tokens a compressed cache kept (restkv.origins), followed through every compression path."""

import pytest
import torch
from transformers import DynamicCache

from restkv import get_press
from restkv.generation import greedy_decode, prefill
from restkv.origins import KeptOrigins, track_origins
from test_streaming import Q, full_layer0_keys, prompt
from tiny_models import tiny_model


def kept_layer0_matches_origins(cache, origins, full, count):
    """Layer 0's keys depend only on tokens and positions: kept entry i must be the full cache's at origin i."""
    where = origins.kept[0][..., :count]
    expected = full.gather(2, where[..., None].expand(-1, -1, -1, full.shape[-1]))
    torch.testing.assert_close(cache.layers[0].keys[..., :count, :], expected)


@pytest.mark.parametrize("method", ["restkv", "snapkv", "streamingllm"])
def test_streamed_origins_name_the_kept_tokens(method):
    model = tiny_model("llama")
    ids = prompt(300)
    press = get_press(method, budget=40, window_size="auto", window_range=(4, 16), chunk_size=64)
    cache = DynamicCache(config=model.config)
    origins = track_origins(cache)
    with torch.no_grad(), press(model):
        prefill(model, ids, cache, press.chunk_size, question_tokens=Q)
    layers = range(model.config.num_hidden_layers)
    assert set(origins.kept) == set(layers)
    for held in origins.kept.values():
        assert held.shape == (1, 2, 40)
        assert bool(((held >= 0) & (held < 300)).all()), "a probe entry or a position past the context"
        assert all(len(set(head.tolist())) == 40 for head in held[0]), "an origin kept twice"
    assert origins.seen == dict.fromkeys(layers, 300)
    kept_layer0_matches_origins(cache, origins, full_layer0_keys(model, ids), 40)


def test_one_shot_origins_are_the_selected_positions():
    model = tiny_model("llama")
    ids = prompt(120)
    press = get_press("snapkv", budget=30, window_size=8)
    cache = DynamicCache(config=model.config)
    origins = track_origins(cache)
    greedy_decode(model, ids, press, 3, cache=cache)
    assert origins.seen[0] == 126
    kept_layer0_matches_origins(cache, origins, full_layer0_keys(model, ids), 30)


def test_share_counts_kept_positions_and_the_uncompressed_tail():
    origins = KeptOrigins()
    origins.update(0, 10, torch.tensor([[[0, 2, 4], [1, 2, 3]]]))  # two heads keep 3 of 10 tokens
    assert origins.share([2]) == 1.0
    assert origins.share([0, 1]) == 0.5  # head 0 has 0, head 1 has 1
    assert origins.share([4, 12]) == 0.75  # 12 came after the last compression: cached
    origins.update(0, 3 + 5 + 2, torch.tensor([[[0, 3, 8], [1, 4, 9]]]), probe=2)  # 5 new tokens, then a probe
    assert origins.kept[0].tolist() == [[[0, 10, -1], [2, 11, -1]]]
    assert origins.seen[0] == 15


def test_tracking_does_not_change_the_answer():
    model = tiny_model("llama")
    ids = prompt(200)
    press = get_press("restkv", budget=40, window_size="auto", window_range=(4, 16), chunk_size=64, rerotate=True)
    plain = greedy_decode(model, ids, press, 5, window=Q)[0]
    cache = DynamicCache(config=model.config)
    track_origins(cache)
    assert greedy_decode(model, ids, press, 5, window=Q, cache=cache)[0] == plain
