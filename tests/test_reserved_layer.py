"""ReservedLayer: appending in place behaves like transformers' concatenating layer."""

import torch
from transformers.cache_utils import DynamicLayer

from restkv.cache import ReservedLayer, reserve


def _plain(keys, values):
    layer = DynamicLayer()
    layer.update(keys, values)
    return layer


def test_appends_match_a_dynamic_layer_through_growth_and_outside_replacement():
    torch.manual_seed(0)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    plain, reserved = _plain(k, v), ReservedLayer(k, v, extra=2)
    for step in range(7):  # past the two reserved slots: the layer grows
        nk, nv = torch.randn(2, 3, 1 + step % 2, 4), torch.randn(2, 3, 1 + step % 2, 4)
        pk, pv = plain.update(nk, nv)
        rk, rv = reserved.update(nk, nv)
        assert torch.equal(pk, rk) and torch.equal(pv, rv)
        if step == 3:  # eviction assigns shorter tensors; the next update must build on them
            plain.keys, plain.values = plain.keys[..., ::2, :], plain.values[..., ::2, :]
            reserved.keys, reserved.values = reserved.keys[..., ::2, :], reserved.values[..., ::2, :]
    assert reserved.get_seq_length() == plain.get_seq_length()


def test_reserve_leaves_other_holders_of_the_tensors_untouched():
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    layer = _plain(k, v)

    class Holder:
        layers = [layer]

    held = reserve(Holder(), extra=4)
    held.layers[0].update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert isinstance(held.layers[0], ReservedLayer) and held.layers[0].get_seq_length() == 4
    assert layer.keys.shape[-2] == 3 and torch.equal(layer.keys, k)


def test_select_rows_keeps_rows_of_every_layer_and_of_the_state_without_touching_forks():
    from transformers import DynamicCache

    from restkv.cache import VarlenLayer, fork_cache, select_rows
    from restkv.state import LayerState, SequenceState, get_state, set_state

    torch.manual_seed(0)
    k, v = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    cache = DynamicCache()
    cache.layers = [ReservedLayer(k, v, extra=4), _plain(k + 1, v + 1)]
    valid = torch.rand(3, 2, 6) > 0.3
    set_state(cache, SequenceState(layers={0: LayerState(6, 6, valid)}, next_pos=torch.tensor([7, 8, 9])))
    fork = fork_cache(cache)
    assert select_rows(fork, [0, 2])
    assert torch.equal(fork.layers[0].keys, k[[0, 2]]) and torch.equal(fork.layers[1].values, v[[0, 2]] + 1)
    state = get_state(fork)
    assert torch.equal(state.next_pos, torch.tensor([7, 9])) and torch.equal(state.layers[0].valid, valid[[0, 2]])
    assert get_state(cache).layers[0].valid.shape[0] == 3 and cache.layers[0].keys.shape[0] == 3  # the original
    fork.layers[0].update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))  # room kept: appends in place
    assert fork.layers[0].keys.shape == (2, 2, 7, 4)
    varlen = DynamicCache()
    positions = torch.arange(6).expand(1, 2, 6)
    varlen.layers = [VarlenLayer(k[:1], v[:1], positions, torch.tensor([[6, 4]]))]
    assert not select_rows(varlen, [0])  # per-head lengths: left as they are
