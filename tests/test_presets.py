"""Named ReST-KV settings: a preset resolves to exactly its parameters, and explicit ones win."""

import pytest

from restkv import get_press
from restkv.presets import PRESETS, preset_params, with_preset
from restkv.scorers import defaults
from restkv.specs import MethodConfig


def test_agnostic_is_exactly_the_probe_the_mean_and_a_fixed_kernel_of_15():
    assert PRESETS["agnostic"] == {"probe": "reconstruct", "temporal": "mean", "pooling": "avgpool", "kernel_size": 15}
    by_name = get_press("restkv", preset="agnostic", compression_ratio=0.75).params()
    by_hand = get_press(
        "restkv", probe="reconstruct", temporal="mean", pooling="avgpool", kernel_size=15, compression_ratio=0.75
    )
    assert by_name == by_hand.params()
    assert by_name["probe"] == "reconstruct" and by_name["temporal"] == "mean" and by_name["kernel_size"] == 15
    assert by_name["pooling"] == "avgpool"
    # every other knob is the paper's
    paper = defaults("restkv")
    assert all(by_name[k] == paper[k] for k in ("window_size", "alpha", "metric_mode", "use_wo", "tau"))


def test_paper_is_the_scorers_defaults():
    assert get_press("restkv", preset="paper", budget=64).params() == get_press("restkv", budget=64).params()


def test_explicit_parameters_override_the_preset():
    press = get_press("restkv", preset="agnostic", budget=64, kernel_size=7, temporal="ema")
    params = press.params()
    assert params["kernel_size"] == 7 and params["temporal"] == "ema" and params["probe"] == "reconstruct"
    assert with_preset("restkv", {"preset": "agnostic", "kernel_size": 3}) == {
        "probe": "reconstruct", "temporal": "mean", "pooling": "avgpool", "kernel_size": 3
    }  # fmt: skip
    assert with_preset("restkv", {"alpha": 0.5}) == {"alpha": 0.5}  # no preset: unchanged


def test_a_preset_is_named_in_a_method_spec_and_its_label():
    config = MethodConfig.make("restkv", None, preset="agnostic", compression_ratio=0.5)
    assert config.label == "restkv(compression_ratio=0.5,preset=agnostic)"
    assert config.press().params()["kernel_size"] == 15


@pytest.mark.parametrize(
    "method, preset, message",
    [
        ("restkv", "fast", "unknown preset 'fast'; presets: agnostic, paper"),
        ("snapkv", "agnostic", "snapkv takes no preset"),
    ],
)
def test_unknown_presets_and_other_methods_are_one_sentence(method, preset, message):
    with pytest.raises(ValueError, match=message):
        get_press(method, preset=preset, budget=64)
    with pytest.raises(ValueError, match=message):
        preset_params(method, preset)
