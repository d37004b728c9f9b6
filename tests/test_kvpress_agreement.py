"""Agreement with NVIDIA kvpress 0.5.5 on the same tiny model and prompt.

The fixtures (kept positions per layer and KV head, and the tiny model's weights) were made by
``benchmarks/peers/kvpress_crosscheck/make_fixtures.py`` in a separate environment with kvpress
0.5.5 and transformers 5.2. Settings are matched where the defaults differ by design:

* kvpress's ``compression_ratio`` keeps ``int(n * (1 - ratio))`` entries: our ``budget``;
* SnapKV: their window 8 and kernel 5 (they average the window's attention, we sum it: same
  ranking);
* TOVA keeps only the last token besides its scores: our ``window_size=1``;
* Knorm keeps no window: ``window_size=0``; StreamingLLM has no window beyond recency;
* ObservedAttention is H2O's statistic averaged over the queries that see each token, over the
  whole prompt: ``h2o`` with ``normalize=True, window_size=0``, eager attention;
* KeyDiff at kvpress's defaults keeps no window: ``keydiff`` with ``window_size=0`` (the anchor
  is the mean unit key of the whole prompt in both);
* ExpectedAttention at kvpress's defaults (``n_sink=4``, ``n_future_positions=512``, covariance
  and value norm on, ``epsilon=0``) keeps no window: ``expected_attention`` with
  ``window_size=0`` and the same defaults under our names (``sinks``, ``future_positions``).
  kvpress projects the pre-RoPE queries again from the hidden states, we undo the rotation of
  the post-RoPE ones: the statistics differ in float rounding only, far below the gaps between
  the scores at the budget's edge on this model;
* LagKV with ``n_sink=4, lag_size=16`` keeps no window: ``lagkv`` with ``window_size=0, sinks=4,
  lag_size=16``. Its scores are ranks within a partition, equal across partitions; at this
  budget the edge falls between two rank levels, so the order among equal ranks (ours prefers
  the later token, kvpress's is ``topk``'s) never decides a kept entry.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from restkv import get_press

FIXTURES = Path(__file__).parent / "fixtures" / "kvpress"
DATA = json.loads((FIXTURES / "kept_indices.json").read_text())
BUDGET = int(len(DATA["input_ids"]) * (1 - DATA["compression_ratio"]))

EQUIVALENT = {
    "snapkv": ("snapkv", dict(window_size=8, kernel_size=5), "sdpa"),
    "streamingllm": ("streamingllm", dict(window_size=1, sinks=4), "sdpa"),
    "tova": ("tova", dict(window_size=1), "sdpa"),
    "knorm": ("knorm", dict(window_size=0), "sdpa"),
    "observed_attention": ("h2o", dict(window_size=0, normalize=True), "eager"),
    "keydiff": ("keydiff", dict(window_size=0), "sdpa"),
    "expected_attention": ("expected_attention", dict(window_size=0), "sdpa"),
    "lagkv": ("lagkv", dict(window_size=0, sinks=4, lag_size=16), "sdpa"),
}


@pytest.mark.parametrize("theirs", sorted(EQUIVALENT))
def test_kept_positions_equal_kvpress(theirs):
    method, params, attn = EQUIVALENT[theirs]
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama", attn_implementation=attn).eval()
    ids = torch.tensor([DATA["input_ids"]])
    full, compressed = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=full)
        with get_press(method, budget=BUDGET, **params)(model):
            model(ids, cache=compressed)
    for layer, expected in enumerate(DATA["kept"][theirs]):
        keys, ours_keys = full.layers[layer].keys, compressed.layers[layer].keys
        dist = (ours_keys[..., :, None, :] - keys[..., None, :, :]).abs().sum(-1)
        ours = dist.argmin(-1).sort(-1).values[0]
        assert ours.tolist() == expected, f"layer {layer}"
