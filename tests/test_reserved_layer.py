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
