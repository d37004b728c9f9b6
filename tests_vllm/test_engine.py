"""One vLLM engine with the plugin (restkv observing at budget 64) on the embedded SmolLM2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import engine
from engine_settings import ENGINE, SAMPLING

HERE = Path(__file__).parent
BUDGET = 64
OBSERVING = {"method": "restkv", "budget": BUDGET, "observe_only": True}
TEXT = (
    "The old lighthouse keeper wrote every evening in a thick notebook. He noted the wind, the colour "
    "of the sea, the ships that passed and the birds that rested on the rail. "
)


@pytest.fixture(scope="module")
def prompts(model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = tokenizer(TEXT * 12 + "What did the keeper note?")["input_ids"]
    # 280 tokens: the last prefill chunk starts at 256, so the 32-query window straddles two chunks
    return [ids[:280], ids[:20]]


@pytest.fixture(scope="module")
def plain_tokens(model_path, prompts, tmp_path_factory):
    """vLLM's tokens with no plugin, from an engine in a subprocess (started before ours)."""
    folder = tmp_path_factory.mktemp("plain")
    (folder / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "VLLM_PLUGINS": "none", "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(
        [sys.executable, str(HERE / "generate_plain.py"), model_path, str(folder / "prompts.json"), str(folder / "out.json")],
        check=True, env=env, timeout=900,
    )  # fmt: skip
    return json.loads((folder / "out.json").read_text())


@pytest.fixture(scope="module")
def llm(model_path, plain_tokens):
    with engine(model_path, additional_config={"restkv": OBSERVING}, **ENGINE) as llm:
        yield llm


def generate(llm, prompts, extra=None):
    from vllm import SamplingParams

    params = SamplingParams(**SAMPLING, extra_args=extra)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_full_gives_vllms_own_tokens(llm, prompts, plain_tokens):
    assert generate(llm, prompts, {"restkv": {"method": "full"}}) == plain_tokens


def test_observing_does_not_change_the_tokens(llm, prompts, plain_tokens):
    from restkv.integrations.vllm.runner import clear_observed, observed

    clear_observed()
    assert generate(llm, prompts) == plain_tokens
    records = observed()
    # the 20-token prompt is within the budget: nothing to score
    assert [(n, len(kept)) for _, n, kept in records] == [(280, 30)]
    for kept in records[0][2].values():
        assert kept.shape == (3, BUDGET)
        assert torch.equal(kept, kept.sort(dim=-1).values)
        assert (kept[:, -32:] == torch.arange(248, 280)).all()  # the window is always kept


def reference_kept(model_path, ids):
    """The kept indices of restkv's scorer on transformers' own queries, keys and values."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from restkv import get_press
    from restkv.adapters import attention_modules, last_queries, layer_context

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager")
    scorer = get_press("restkv", budget=BUDGET).scorer
    inputs = {}
    modules = attention_modules(model)
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, kw: inputs.__setitem__(mod.layer_idx, kw), with_kwargs=True)
        for m in modules
    ]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.tensor([ids]), past_key_values=cache, use_cache=True)
    for h in hooks:
        h.remove()
    kept = {}
    with torch.no_grad():
        for m in modules:
            kw = inputs[m.layer_idx]
            q = last_queries(m, kw["hidden_states"], kw["position_embeddings"], scorer.window_size)
            layer = cache.layers[m.layer_idx]
            context = layer_context(m, (m.layer_idx, len(modules))).scorer_kwargs()
            kept[m.layer_idx] = scorer.select(q, layer.keys, layer.values, budget=BUDGET, **context)[0]
    return kept


def test_kept_indices_match_restkv_on_transformers(llm, prompts, model_path):
    """What the plugin keeps, from queries captured in vLLM and keys/values read back through the
    block table, equals the scorer on transformers' own tensors (up to numerical near-ties)."""
    from restkv.integrations.vllm.runner import clear_observed, observed

    clear_observed()
    generate(llm, prompts[:1])
    (_, _, kept), = observed()
    reference = reference_kept(model_path, prompts[0])
    overlaps, exact = [], 0
    for index, ref in reference.items():
        for head in range(ref.shape[0]):
            mine, theirs = set(kept[index][head].tolist()), set(ref[head].tolist())
            overlaps.append(len(mine & theirs) / BUDGET)
            exact += mine == theirs
    print(f"kept sets equal in {exact}/{len(overlaps)} (layer, head) pairs; mean overlap {sum(overlaps) / len(overlaps):.4f}")
    # 90/90 equal on this machine; a near-tie may flip elsewhere
    assert sum(overlaps) / len(overlaps) >= 0.99
    assert exact >= 0.95 * len(overlaps)


def test_a_request_may_evict_on_an_observing_engine(llm, prompts):
    """A request's own setting wins over the engine's: without observe_only its prompt is compacted."""
    from restkv.integrations.vllm.ledger import LEDGER

    LEDGER.clear_history()
    assert generate(llm, prompts[:1], {"restkv": {"method": "snapkv", "budget": BUDGET}})
    (compaction, free_after), = LEDGER.history
    assert compaction.written and compaction.kept == BUDGET and free_after is not None
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        generate(llm, prompts[1:], {"restkv": {"method": "nope"}})
    assert generate(llm, prompts[1:], {"restkv": {"method": "full"}})  # the engine still serves


def test_start_up_refuses_in_one_sentence(model_path, llm):
    """The check runs where the engine's config is built, before any engine process starts."""
    from vllm.engine.arg_utils import EngineArgs

    settings = {**ENGINE, "enable_prefix_caching": True}
    args = EngineArgs(model=model_path, additional_config={"restkv": OBSERVING}, **settings)
    with pytest.raises(ValueError, match="turn off prefix caching"):
        args.create_engine_config()
    args = EngineArgs(model=model_path, additional_config={"restkv": {"method": "restkv"}}, **ENGINE)
    with pytest.raises(ValueError, match="budget"):
        args.create_engine_config()
