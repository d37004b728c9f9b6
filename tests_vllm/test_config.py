"""The plugin's settings and refusals, and the CPU layout helpers, without an engine."""

from types import SimpleNamespace

import pytest
import torch

from restkv._compat import vllm as compat
from restkv.integrations.vllm import config

OBSERVE = {"method": "restkv", "budget": 64, "observe_only": True}


def test_full_and_absent_keep_everything():
    assert config.parse(None, "x") is config.FULL
    assert config.parse({"method": "full"}, "x") is config.FULL


def test_an_observing_method_builds_its_press():
    setting = config.parse({**OBSERVE, "alpha": 0.5}, "x")
    assert setting.evicting and setting.observe_only
    assert setting.press.scorer.name == "restkv" and setting.press.budget == 64
    assert setting.press.scorer.alpha == 0.5
    assert setting.budget(1000) == 64 and setting.budget(40) == 40


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"method": "nope"}, "unknown method 'nope'"),
        ({**OBSERVE, "allocator": "pyramid"}, "uniform allocator only"),
        ({**OBSERVE, "bogus": 1}, "no parameter bogus"),
        ({"method": "full", "budget": 3}, "full takes no parameters"),
        ({**OBSERVE, "decode_budget": 48}, "does not support decode_budget"),
        ({**OBSERVE, "chunk_size": 128}, "does not support chunk_size"),
        ({**OBSERVE, "observe_only": "yes"}, "observe_only must be true or false"),
        ({"budget": 64}, "needs a 'method'"),
        ("restkv", "must be a dict"),
        ('{"method": "restkv", "budget": 64, "allocator": "pyramid"}', "uniform allocator only"),
    ],
)
def test_refusals_are_one_sentence(raw, words):
    with pytest.raises(ValueError) as err:
        config.parse(raw, 'extra_args["restkv"]')
    message = str(err.value)
    assert words in message and message.startswith('extra_args["restkv"]') and "\n" not in message


def fake_engine(**over):
    values = dict(
        hf=SimpleNamespace(model_type="llama", sliding_window=None, layer_types=None),
        prefix=False, spec=None, tp=1, pp=1, v2=False, async_=False, executor="uni",
    )
    values.update(over)
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_text_config=values["hf"], hf_config=values["hf"]),
        cache_config=SimpleNamespace(enable_prefix_caching=values["prefix"]),
        speculative_config=values["spec"],
        parallel_config=SimpleNamespace(
            tensor_parallel_size=values["tp"], pipeline_parallel_size=values["pp"],
            distributed_executor_backend=values["executor"],
        ),  # fmt: skip
        scheduler_config=SimpleNamespace(async_scheduling=values["async_"]),
        use_v2_model_runner=values["v2"],
        additional_config={"restkv": OBSERVE},
    )


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"prefix": True}, "turn off prefix caching"),
        ({"tp": 2}, "tensor_parallel_size=1"),
        ({"spec": object()}, "speculative decoding"),
        ({"v2": True}, "VLLM_USE_V2_MODEL_RUNNER=0"),
        ({"async_": True}, "turn off async scheduling"),
        ({"executor": "mp"}, "distributed_executor_backend='uni'"),
        ({"hf": SimpleNamespace(model_type="gemma3_text", sliding_window=512, layer_types=None)}, "gemma3_text"),
    ],
)
def test_engines_the_plugin_refuses(over, words):
    engine = fake_engine(**over)
    with pytest.raises(ValueError, match=words):
        config.engine_setting(engine)
    with pytest.raises(ValueError, match=words):  # a request naming a method on that engine, too
        config.request_setting(SimpleNamespace(extra_args={"restkv": OBSERVE}), config.FULL, engine)
    # full is never refused
    assert config.request_setting(SimpleNamespace(extra_args={"restkv": {"method": "full"}}), config.FULL, engine) is config.FULL


def test_a_plain_engine_accepts_an_observing_method():
    assert config.engine_setting(fake_engine()).evicting


def test_version_check_names_the_range():
    compat.check("0.32.0")
    compat.check("0.32.3+cpu")
    with pytest.raises(compat.UnsupportedVersionError, match="written for vLLM 0.32.x and vLLM 0.33.0 is installed"):
        compat.check("0.33.0")


def test_cpu_layout_read_and_write_round_trip():
    blocks, heads, size, d = 6, 3, 4, 2
    cache = torch.zeros(blocks, heads, size, 2 * d)
    table = [4, 1, 3]  # a request's blocks, out of order
    keys = torch.randn(1, heads, 10, d)
    values = torch.randn(1, heads, 10, d)
    compat.write_kv_cpu(cache, table, keys, values)
    # slot 5 = second block of the table (block 1), offset 1; per block and head the memory holds
    # the keys dimension-major, then the values token-major
    interior = cache[1].reshape(heads, 2, size * d)
    assert torch.equal(interior[:, 0].reshape(heads, d, size)[:, :, 1], keys[0, :, 5])
    assert torch.equal(interior[:, 1].reshape(heads, size, d)[:, 1], values[0, :, 5])
    assert cache[0].abs().sum() == 0 and cache[2].abs().sum() == 0  # other blocks untouched
    k, v = compat.read_kv_cpu(cache, table, 10)
    assert torch.equal(k, keys) and torch.equal(v, values)


def test_flash_layout_read_and_write_round_trip():
    blocks, heads, size, d = 5, 2, 4, 3
    cache = torch.zeros(blocks, heads, size, 2 * d)
    table = [3, 0]
    keys, values = torch.randn(1, heads, 7, d), torch.randn(1, heads, 7, d)
    compat.write_kv_flash(cache, table, keys, values)
    # as FlashAttention's forward reads it: (B, H, N, 2D) -> keys and values (B, N, H, D)
    key_cache, value_cache = cache.transpose(1, 2).split(d, dim=-1)
    assert torch.equal(key_cache[0, 1], keys[0, :, 5]) and torch.equal(value_cache[3, 2], values[0, :, 2])
    assert cache[[1, 2, 4]].abs().sum() == 0
    k, v = compat.read_kv_flash(cache, table, 7)
    assert torch.equal(k, keys) and torch.equal(v, values)


def test_unknown_attention_backends_are_refused():
    class TritonAttentionImpl:
        pass

    with pytest.raises(ValueError, match="this engine's attention is TritonAttentionImpl"):
        compat.kv_access(SimpleNamespace(impl=TritonAttentionImpl()))


def test_unchecked_cpu_kernels_are_refused():
    compat.check_cpu_isa("vec")
    with pytest.raises(ValueError, match="'amx', whose layout has not been checked"):
        compat.check_cpu_isa("amx")
