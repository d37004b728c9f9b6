"""A compressed request that vLLM preempts comes back compressed identically (one engine with a pool of
24 blocks and priority scheduling: a newer request with a higher priority grows while decoding until
the pool is dry, and vLLM preempts the older compressed request, which then recomputes)."""

import pytest
import torch
from conftest import engine, passkey_prompts
from engine_settings import ENGINE

BLOCK = 32
EVICTING = {"method": "restkv", "budget": 128}
SETTINGS = dict(
    ENGINE, block_size=BLOCK, max_model_len=736, max_num_batched_tokens=256, max_num_seqs=4,
    num_gpu_blocks_override=24, scheduling_policy="priority",
)  # fmt: skip


@pytest.fixture(scope="module")
def llm(model_path):
    with engine(model_path, additional_config={"restkv": EVICTING}, **SETTINGS) as llm:
        yield llm


def params(max_tokens, extra=None):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)


def run(engine, until_done=True):
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
    return outputs


def test_a_preempted_request_comes_back_compressed_identically(llm, model_path):
    from restkv._compat.vllm import engine_core
    from restkv.integrations.vllm.ledger import LEDGER

    core = engine_core(llm)
    free = core.scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    low = passkey_prompts(model_path, 1, 500, seed=3)[0]  # 16 blocks until compressed, then 4 (+1 decoding)
    high = passkey_prompts(model_path, 1, 570, seed=4)[0]  # 18 blocks, then one more every 32 tokens
    engine = llm.llm_engine

    LEDGER.clear_history()
    engine.add_request("alone", {"prompt_token_ids": low}, params(80))
    alone = run(engine)["alone"]

    LEDGER.clear_history()
    engine.add_request("low", {"prompt_token_ids": low}, params(80), priority=10)
    while len(LEDGER.history) < 1:
        engine.step()
    for _ in range(5):  # decoding from its compressed cache
        engine.step()
    engine.add_request("high", {"prompt_token_ids": high}, params(60, {"restkv": {"method": "full"}}), priority=0)
    outputs = run(engine)

    low_compactions = [c for c, _ in LEDGER.history if c.request_id.startswith("low")]
    assert len(low_compactions) == 2, "the low-priority request was not preempted after its compression"
    first, again = low_compactions
    assert first.kept == again.kept and all(torch.equal(first.indices[i], again.indices[i]) for i in first.indices)
    assert outputs["low"] == alone
    assert core.scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == free and not LEDGER.active()
