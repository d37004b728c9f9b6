"""One vLLM engine evicting with restkv (budget 128) on the embedded SmolLM2: answers against restkv's
press on transformers, the block pool's accounting, aborts, and concurrent mixed requests."""

import pytest
from conftest import engine, passkey_prompts, press_answers
from engine_settings import ENGINE

BUDGET = 128
BLOCK = 32  # the CPU backend's smallest block size
EVICTING = {"method": "restkv", "budget": BUDGET}
MAX_TOKENS = 12
SETTINGS = dict(ENGINE, block_size=BLOCK, max_model_len=2048, max_num_batched_tokens=256, max_num_seqs=16)


@pytest.fixture(scope="module")
def llm(model_path):
    with engine(model_path, additional_config={"restkv": EVICTING}, **SETTINGS) as llm:
        yield llm


@pytest.fixture(scope="module")
def core(llm):
    from restkv._compat.vllm import engine_core

    return engine_core(llm)


def params(extra=None, max_tokens=MAX_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, extra_args=extra)


def generate(llm, prompts, extras=None):
    extras = extras or [None] * len(prompts)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], [params(e) for e in extras], use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def free_blocks(core):
    return core.scheduler.kv_cache_manager.block_pool.get_num_free_blocks()


@pytest.fixture(scope="module")
def passkeys(model_path):
    return passkey_prompts(model_path, 10, 900, seed=7)


def test_answers_agree_with_the_press_on_transformers(llm, passkeys, model_path, tmp_path):
    mine = generate(llm, passkeys)
    theirs = press_answers(model_path, passkeys, [EVICTING] * len(passkeys), MAX_TOKENS, tmp_path)
    same = sum(a == b for a, b in zip(mine, theirs))
    print(f"greedy answers equal to restkv's press on transformers: {same}/{len(passkeys)}")
    assert same >= 0.8 * len(passkeys)  # numerics differ between the engines; 10/10 on this machine


def test_compaction_frees_what_the_kept_size_implies(llm, core, passkeys):
    from restkv.integrations.vllm.ledger import LEDGER

    LEDGER.clear_history()
    before = free_blocks(core)
    engine = llm.llm_engine
    engine.add_request("one", {"prompt_token_ids": passkeys[0]}, params())
    n = len(passkeys[0])
    while not LEDGER.history:
        engine.step()
    (compaction, free_after), = LEDGER.history
    assert (compaction.prompt_tokens, compaction.kept) == (n, BUDGET)
    assert compaction.blocks_before == -(-n // BLOCK) and compaction.blocks_kept == BUDGET // BLOCK
    assert free_after == before - BUDGET // BLOCK  # the prompt's other blocks are back in the pool
    while engine.has_unfinished_requests():
        engine.step()
    assert free_blocks(core) == before and not LEDGER.active()  # nothing leaked


def test_an_aborted_request_frees_everything(llm, core, passkeys):
    from restkv.integrations.vllm.ledger import LEDGER

    LEDGER.clear_history()
    before = free_blocks(core)
    engine = llm.llm_engine
    engine.add_request("cut", {"prompt_token_ids": passkeys[1]}, params(max_tokens=200))
    while not LEDGER.history:
        engine.step()
    for _ in range(3):  # mid-decode
        engine.step()
    assert free_blocks(core) < before
    engine.abort_request(["cut"])
    while engine.has_unfinished_requests():
        engine.step()
    assert free_blocks(core) == before and not LEDGER.active()


def test_concurrent_mixed_requests_answer_as_alone(llm, core, passkeys, model_path):
    prompts = [passkey_prompts(model_path, 1, 160 + 20 * i, seed=11 + i)[0] for i in range(16)]  # 160-460 tokens
    methods = [EVICTING, {"method": "snapkv", "budget": 96}, {"method": "full"}, {"method": "streamingllm", "budget": 64}]
    extras = [{"restkv": methods[i % len(methods)]} for i in range(len(prompts))]
    before = free_blocks(core)
    together = generate(llm, prompts, extras)
    alone = [generate(llm, [p], [e])[0] for p, e in zip(prompts, extras)]
    assert together == alone
    assert free_blocks(core) == before


def test_a_bad_request_is_refused_and_the_engine_serves_on(llm, passkeys):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        generate(llm, passkeys[:1], [{"restkv": {"method": "nope"}}])
    with pytest.raises(ValueError, match="uniform allocator only"):
        generate(llm, passkeys[:1], [{"restkv": {**EVICTING, "allocator": "pyramid"}}])
    assert generate(llm, passkeys[:1])
