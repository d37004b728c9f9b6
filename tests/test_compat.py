"""Contracts of ``restkv._compat``: the outside names and shapes each module relies on, and its version check.

A contract test fails when an upstream release renames, removes or reshapes what restkv reaches
into; the version tests fail when a module's check is missing or says something unhelpful.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
import time

import pytest
import torch
from transformers import GenerationConfig, PretrainedConfig
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

from restkv._compat import (
    accelerate_hooks,
    lm_eval,
    torch_inductor,
    transformers_attention,
    transformers_cache,
    transformers_config,
    transformers_serving,
    uvicorn_server,
    versions,
)
from restkv._compat.versions import UnsupportedVersionError, in_range, release
from tiny_models import FAMILIES, tiny_model

MODULES = [accelerate_hooks, lm_eval, torch_inductor, transformers_attention, transformers_cache,
           transformers_config, transformers_serving, uvicorn_server]  # fmt: skip


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


# -- the version check -----------------------------------------------------------------------------
def test_release_reads_the_leading_numbers():
    assert release("2.13.0+cpu") == (2, 13, 0)
    assert release("5.24.0.dev0") == (5, 24, 0)
    assert release("0.4") == (0, 4)
    with pytest.raises(ValueError, match="cannot read a release number"):
        release("nightly")


@pytest.mark.parametrize(
    ("version", "supported", "inside"),
    [("5.24.0", ">=5.2,<6", True), ("5.2", ">=5.2,<6", True), ("5.1.9", ">=5.2,<6", False),
     ("6.0.0", ">=5.2,<6", False), ("6.0.0rc1", ">=5.2,<6", False), ("2.13.0+cpu", ">=2.6,<3", True),
     ("0.4.13", "==0.4.13", True), ("0.4.14", "<=0.4.13", False), ("1.0", ">1", False)],
)  # fmt: skip
def test_in_range_compares_release_numbers(version, supported, inside):
    assert in_range(version, supported) is inside


def test_a_range_it_cannot_read_is_one_sentence():
    with pytest.raises(ValueError, match="cannot read the version clause '~=5.2'"):
        in_range("5.2", "~=5.2")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rpartition(".")[2])
def test_every_module_accepts_the_installed_version(module):
    module.check()  # the versions this suite runs on are inside every module's range


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rpartition(".")[2])
def test_an_out_of_range_version_raises_one_sentence(module, monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda name: "999.0" if name == module.DISTRIBUTION else "1")
    message = f"{module.SEAM} was written for {module.DISTRIBUTION}{module.SUPPORTED} and {module.DISTRIBUTION} 999.0"
    with pytest.raises(UnsupportedVersionError, match="^" + re.escape(f"{message} is installed: install")):
        module.check()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rpartition(".")[2])
def test_importing_a_module_checks_nothing(module, monkeypatch):
    # users without (or with another version of) the project are unaffected until the seam is used
    monkeypatch.setattr(versions, "installed_version", lambda name: "999.0")
    importlib.reload(module)


def test_a_missing_project_passes_the_check(monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda name: None)
    transformers_serving.check()


def test_the_seam_itself_raises_when_the_version_is_out_of_range(monkeypatch):
    monkeypatch.setattr(versions, "installed_version", lambda name: "4.57.0")
    with pytest.raises(UnsupportedVersionError, match="transformers>=5.2,<6 and transformers 4.57.0 is installed"):
        transformers_config.attention_implementation(PretrainedConfig())
    with pytest.raises(UnsupportedVersionError, match="continuous batching"):
        transformers_serving.blocks_of(None, "r")


def test_the_cli_says_the_sentence_and_exits_2(monkeypatch, capsys):
    import restkv.cli.methods
    from restkv.cli import EXIT_USAGE, main

    def run(args):
        transformers_serving.check()

    monkeypatch.setattr(restkv.cli.methods, "run", run)
    monkeypatch.setattr(versions, "installed_version", lambda name: "7.0")
    assert main(["methods"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "restkv: error: restkv's paged eviction inside transformers' continuous batching was written for" in err
    assert "Traceback" not in err


# -- transformers: config --------------------------------------------------------------------------
def test_the_attention_implementation_is_read_and_switched_on_the_config():
    model = tiny_model("llama", attn="eager")
    assert transformers_config.attention_implementation(model.config) == "eager"
    transformers_config.set_attention_implementation(model.config, "sdpa")
    assert transformers_config.attention_implementation(model.config) == "sdpa"
    assert model.config._attn_implementation == "sdpa"  # the field the attention modules read


def test_the_checkpoint_name_is_the_configs_name_or_path():
    assert transformers_config.name_or_path(PretrainedConfig(name_or_path="org/model")) == "org/model"
    assert transformers_config.name_or_path(PretrainedConfig()) == ""


# -- transformers: family attention ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_module_defines_its_eager_attention(family):
    from restkv.adapters import attention_modules

    module = attention_modules(tiny_model(family))[0]
    forward = transformers_attention.eager_attention_forward(module)
    assert forward.__module__ == type(module).__module__
    assert parameters(forward)[:5] == ["module", "query", "key", "value", "attention_mask"]
    assert "scaling" in parameters(forward)


def test_a_module_without_eager_attention_is_one_sentence():
    with pytest.raises(ValueError, match="defines no eager_attention_forward for Linear"):
        transformers_attention.eager_attention_forward(torch.nn.Linear(2, 2))


# -- transformers: cache layers --------------------------------------------------------------------
def test_the_layer_mixins_init_sets_what_restkvs_layers_set_themselves():
    layer = object.__new__(DynamicLayer)
    CacheLayerMixin.__init__(layer)
    assert set(vars(layer)) == set(transformers_cache.MIXIN_INIT_ATTRIBUTES)


def test_restkvs_layers_that_skip_the_mixins_init_have_its_attributes():
    from restkv.cache import VarlenLayer
    from restkv.static_decode import SlotLayer

    keys = torch.randn(1, 2, 5, 4)
    varlen = VarlenLayer(keys, keys, torch.arange(5).expand(1, 2, 5), torch.tensor([[5, 3]]))
    slots = SlotLayer(keys, keys, 8, torch.zeros(1, dtype=torch.long), 0)
    for layer in (varlen, slots):
        for name in transformers_cache.MIXIN_INIT_ATTRIBUTES:
            assert hasattr(layer, name), (type(layer).__name__, name)
        assert layer.is_initialized


@pytest.mark.parametrize("backend", ["hqq", "quanto"])
def test_a_quantized_layer_holds_its_payload_after_an_update(backend):
    from transformers.cache_utils import HQQQuantizedLayer, QuantoQuantizedLayer

    layer_class = {"hqq": HQQQuantizedLayer, "quanto": QuantoQuantizedLayer}[backend]
    layer = layer_class(4, q_group_size=16, residual_length=4)
    keys = torch.randn(1, 2, 6, 16)
    layer.update(keys, keys.clone())
    quantized_keys, quantized_values = transformers_cache.quantized_payload(layer)
    assert quantized_keys is not None and quantized_values is not None
    assert transformers_cache.quantized_keys_shape(layer) == (1, 2, 6, 16)


# -- transformers: continuous batching and serving -----------------------------------------------
def test_the_batch_processor_factory_exists_and_takes_no_arguments():
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    assert parameters(ContinuousBatchingManager._create_batch_processor) == ["self"]


def test_the_allocator_pool_and_ledger_have_the_methods_paged_eviction_calls():
    from transformers.generation.continuous_batching.cache_allocators.cache_allocator import BlockLedger
    from transformers.generation.continuous_batching.cache_allocators.cache_pool import CachePool
    from transformers.generation.continuous_batching.cache_allocators.full_attention import (
        FullAttentionCacheAllocator,
    )

    assert parameters(BlockLedger.release) == ["self", "block_id", "no_cache"]
    assert parameters(CachePool.free_blocks) == ["self", "index", "block_ids"]
    assert parameters(CachePool.count_free_blocks) == ["self", "index"]
    assert isinstance(CachePool.num_free_sectors, property)
    assert parameters(FullAttentionCacheAllocator.get_read_indices) == [
        "self",
        "request_id",
        "past_length",
        "query_length",
    ]
    assert parameters(FullAttentionCacheAllocator.get_cache_for_block_table) == ["self", "layer_idx"]


def test_a_running_manager_hooks_its_processor_and_its_cache_has_the_shape_we_read():
    from restkv.serve.server import continuous_batching_config

    model = tiny_model("llama", attn="sdpa")
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=-1, pad_token_id=0),
        continuous_batching_config=continuous_batching_config(page_size=16, num_blocks=32, max_batch_tokens=64),
    )
    seen, inside = [], {}

    def hook(processor):
        seen.append(processor)
        update = processor.update_batch

        def update_batch():  # read the live request's blocks while it is still running
            update()
            for future in processor.inputs_and_outputs.requests_in_batch:
                rid = future.state.request_id
                inside[rid] = max(inside.get(rid, 0), transformers_serving.blocks_of(processor.cache, rid))

        processor.update_batch = update_batch

    transformers_serving.wrap_batch_processor_factory(manager, hook)
    manager.start()
    try:
        manager.add_request(list(range(1, 40)), request_id="r0", max_new_tokens=3)
        result = manager.get_result(request_id="r0", timeout=120)
    finally:
        manager.stop(block=True, timeout=60)
    assert result is not None and len(result.generated_tokens) == 3
    assert len(seen) == 1
    cache = seen[0].cache
    assert set(cache.layer_to_allocator) == {0, 1, 2}
    for allocator in cache.cache_allocators.values():
        assert isinstance(allocator.block_table, dict)
        assert callable(allocator.ledger.release) and allocator.pool is cache.pool
        assert isinstance(allocator.index, int) and allocator.tokens_per_page == 16
        assert allocator.blocks_per_sector > 0
    assert inside["r0"] == 3  # 39 prompt tokens + 1 generated, in pages of 16
    assert transformers_serving.blocks_of(cache, "r0") == 0  # finished: its blocks are back
    assert 0 < transformers_serving.free_blocks(cache) <= transformers_serving.total_blocks(cache)


class _Allocator:
    """The shape of an allocator :func:`release_blocks` reads (checked against the real one above)."""

    index = 0

    def __init__(self):
        self.block_table = {"r": [7, 8, 9, 10]}
        self.released, self.freed = [], []
        self.ledger = type(
            "Ledger", (), {"release": lambda _, block, no_cache: self.released.append(block) or block != 9}
        )()
        self.pool = type("Pool", (), {"free_blocks": lambda _, index, blocks: self.freed.extend(blocks)})()


def test_release_blocks_shortens_the_table_and_frees_what_the_ledger_lets_go():
    allocator = _Allocator()
    transformers_serving.release_blocks(allocator, "r", 2)
    assert allocator.block_table["r"] == [7, 8]
    assert allocator.released == [9, 10] and allocator.freed == [10]  # block 9 is still referenced


def test_the_serving_clis_managers_keep_the_fields_the_subclasses_read():
    from transformers import ContinuousBatchingConfig
    from transformers.cli.serving.utils import CBGenerateManager, GenerationState

    config = ContinuousBatchingConfig()
    attached = []
    state = transformers_serving.attaching_generation_state(config, attached.append, lambda *request: None)
    assert isinstance(state, GenerationState)
    assert state._cb_config is config and state._cb_manager is None
    manager = state.get_manager("model@main", use_cb=True)
    assert isinstance(manager, CBGenerateManager) and manager is state.get_manager("model@main", use_cb=True)
    assert manager._cb is None and manager._cb_config is config
    assert parameters(CBGenerateManager.init_cb) == ["self", "model", "gen_config"]
    # the two calls the subclass checks each request in, with the arguments it passes on
    assert parameters(CBGenerateManager.generate_streaming) == [
        "self", "model", "processor", "inputs", "gen_config", "request_id", "response_parser",
    ]  # fmt: skip
    assert parameters(CBGenerateManager.generate_non_streaming) == [
        "self", "model", "processor", "inputs", "gen_config", "request_id",
    ]  # fmt: skip
    assert attached == []  # attach runs when the manager starts, with the first request


# -- torch: inductor and dynamo -----------------------------------------------------------------------
def test_inductor_has_the_settings_the_compiled_step_patches():
    import torch._inductor.config

    from restkv.static_decode import CPU_INDUCTOR

    before = {key: getattr(torch._inductor.config, key) for key in CPU_INDUCTOR}
    with torch_inductor.inductor_config_patch(CPU_INDUCTOR):
        assert {key: getattr(torch._inductor.config, key) for key in CPU_INDUCTOR} == CPU_INDUCTOR
    assert {key: getattr(torch._inductor.config, key) for key in CPU_INDUCTOR} == before


def test_the_recompile_limit_is_raised_never_lowered(monkeypatch):
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    assert torch_inductor.raise_recompile_limit(64) == 64
    assert torch_inductor.raise_recompile_limit(16) == 64
    assert torch._dynamo.config.recompile_limit == 64


# -- lm-eval ---------------------------------------------------------------------------------------------
def test_hflm_has_the_private_methods_the_harness_overrides_with_the_arguments_it_passes():
    from lm_eval.models.huggingface import HFLM

    assert lm_eval.hflm_class() is HFLM
    assert parameters(HFLM._model_generate)[:4] == ["self", "context", "max_length", "stop"]
    assert inspect.signature(HFLM._model_generate).parameters["generation_kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert parameters(HFLM._loglikelihood_tokens) == ["self", "requests", "disable_tqdm", "override_bs"]


# -- accelerate -------------------------------------------------------------------------------------------
def test_an_offloaded_modules_hook_carries_its_weights_map_and_device():
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    linear = torch.nn.Linear(2, 2)
    assert accelerate_hooks.offload_hook(linear) is None
    hook = AlignDevicesHook(execution_device="cpu", offload=True, weights_map={"weight": linear.weight.detach()})
    add_hook_to_module(linear, hook)
    assert accelerate_hooks.offload_hook(linear) is hook
    assert hook.execution_device == "cpu" and "weight" in hook.weights_map


# -- uvicorn -----------------------------------------------------------------------------------------------
def test_a_started_uvicorn_server_tells_its_port():
    import uvicorn

    async def app(scope, receive, send):  # never called: no request is made
        raise AssertionError("no request expected")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.started
        assert uvicorn_server.bound_port(server) > 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
