"""KVzip against NVIDIA kvpress 0.5.5's KVzipPress on the shared tiny model (fixtures made by
``benchmarks/peers/kvpress_crosscheck/make_fixtures.py``): the same reconstruction inputs,
and exactly the same kept entries per layer and KV head, at its default (one pass, kept over
all layers), ``layerwise`` and with three reconstruction passes (chunk_size 32).

kvpress's repeat prompts are read from the fixture (the ids it fed), so no prompt text is
written here: ours (restkv.probes) is worded differently."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from restkv.reconstruct import kvzip_kept, kvzip_scores, reconstruction_inputs
from restkv.scorers.kvzip import KVzipScorer

FIXTURES = Path(__file__).parent / "fixtures" / "kvpress"
DATA = json.loads((FIXTURES / "kept_indices.json").read_text())
IDS = torch.tensor([DATA["input_ids"]])


def prompts(record):
    """kvpress's first and later repeat prompts and its answer suffix, cut out of the ids it fed."""
    fed, size, n = record["reconstruction_ids"], record["chunk_size"], IDS.shape[1]
    answer = torch.tensor([[fed[0][-min(size, n) - 1]]])
    first = torch.tensor([fed[0][: len(fed[0]) - min(size, n) - 1]])
    later = None
    if len(fed) > 1:
        later = torch.tensor([fed[1][: len(fed[1]) - min(size, n - size) - 1 - 8]])
    return first, later, answer


@pytest.mark.parametrize("name", sorted(DATA["kvzip"]))
def test_kvzip_keeps_kvpress_entries(name):
    record = DATA["kvzip"][name]
    scorer = KVzipScorer(sinks=record["sinks"], chunk_size=record["chunk_size"], layerwise=record["layerwise"])
    first, later, answer = prompts(record)
    fed = [ids[0].tolist() for _, _, ids in reconstruction_inputs(IDS, scorer, first, later, answer)]
    assert fed == record["reconstruction_ids"]
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama", attn_implementation="sdpa").eval()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(IDS, cache=cache)
        scores = kvzip_scores(model, cache, IDS, scorer, first, later, answer)
    assert all(layer.keys.shape[-2] == IDS.shape[1] for layer in cache.layers)  # the repeats are gone
    kept = kvzip_kept(scores, scorer, DATA["compression_ratio"])
    assert [kept[i] for i in sorted(kept)] == record["kept"]


def test_kvzip_scorer_is_not_a_press_method_yet():
    """Until a press runs the reconstruction passes, kvzip is not in the registry (every method
    listed there must compress under get_press)."""
    from restkv.scorers import available

    assert "kvzip" not in available()


def test_kvzip_parameters_are_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        KVzipScorer(chunk_size=0)
    with pytest.raises(ValueError, match="layerwise"):
        KVzipScorer(layerwise=1)


def test_kvzip_scorer_refuses_prompt_scoring():
    with pytest.raises(ValueError, match="reconstruction passes"):
        KVzipScorer().prefix_scores(None, torch.zeros(1, 1, 8, 4), None, budget=4, o_proj=None,
                                          key_mask=None, scaling=None, softcap=None)  # fmt: skip
