"""Kept-index fixtures from NVIDIA kvpress, for restkv's agreement tests.

Run in a separate virtual environment (kvpress 0.5.x needs transformers < 5.3):

    python3 -m venv /tmp/kvpress-venv
    /tmp/kvpress-venv/bin/pip install torch==2.13.0 kvpress==0.5.5
    /tmp/kvpress-venv/bin/python benchmarks/peers/kvpress_crosscheck/make_fixtures.py tests/fixtures/kvpress

It builds a tiny random-weight Llama (GQA, 4 query / 2 KV heads) and saves it next to the
fixtures, so restkv's tests load exactly the same weights under their own transformers. For
each press it records, per layer and KV head, which prompt positions kvpress kept (found by
matching the compressed cache's keys to the full cache's).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
from kvpress import (
    ExpectedAttentionPress,
    KeyDiffPress,
    KnormPress,
    KVzipPress,
    LagKVPress,
    ObservedAttentionPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

N_TOKENS = 96
RATIO = 0.5


def tiny_model(attn: str):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4)  # sharper attention, so rankings are far from ties
    model.config._attn_implementation = attn
    return model.eval()


def kept_positions(full_keys, kept_keys):
    dist = (kept_keys[..., :, None, :] - full_keys[..., None, :, :]).abs().sum(-1)
    assert bool((dist.min(-1).values == 0).all())
    return dist.argmin(-1).sort(-1).values


def run(model, ids, press):
    cache = DynamicCache()
    with torch.no_grad():
        if press is None:
            model(ids, past_key_values=cache)
        else:
            with press(model):
                model(ids, past_key_values=cache)
    return [layer.keys for layer in cache.layers]


def save_char_tokenizer(path: Path) -> None:
    """A character tokenizer over the 128 ASCII codes (id = code point), saved with the tiny
    model: KVzipPress loads the model's tokenizer to encode its repeat prompts, and the tiny
    model's vocabulary has 128 entries."""
    vocab = {chr(i): i for i in range(128)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE(vocab=vocab, merges=[])))
    tokenizer.save_pretrained(path)


def kvzip_kept(model, ids, press):
    """KVzipPress masks evicted entries instead of removing them: the kept positions per layer
    and KV head are those not in each attention module's ``masked_key_indices``, and the
    reconstruction forwards it fed (their token ids) are recorded as well."""
    fed = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kwargs: fed.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        with torch.no_grad(), press(model):
            model(input_ids=ids, past_key_values=DynamicCache())
    finally:
        hook.remove()
    kept = []
    for layer in model.model.layers:
        _, heads, positions = layer.self_attn.masked_key_indices
        evicted = torch.zeros(model.config.num_key_value_heads, ids.shape[1], dtype=torch.bool)
        evicted[heads, positions] = True
        kept.append([torch.nonzero(~row).flatten().tolist() for row in evicted])
        layer.self_attn.masked_key_indices = None
    return kept, fed[1:]


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(3, 128, (1, N_TOKENS), generator=torch.Generator().manual_seed(1))
    presses = {
        "snapkv": (SnapKVPress(compression_ratio=RATIO, window_size=8, kernel_size=5), "sdpa"),
        "streamingllm": (StreamingLLMPress(compression_ratio=RATIO, n_sink=4), "sdpa"),
        "tova": (TOVAPress(compression_ratio=RATIO), "sdpa"),
        "knorm": (KnormPress(compression_ratio=RATIO), "sdpa"),
        "observed_attention": (ObservedAttentionPress(compression_ratio=RATIO), "eager"),
        # the query-agnostic presses of kvpress's leaderboard, at their defaults
        "keydiff": (KeyDiffPress(compression_ratio=RATIO), "sdpa"),
        "expected_attention": (ExpectedAttentionPress(compression_ratio=RATIO), "sdpa"),
        # lag 16: 4 full partitions are ranked and 16 of their 64 tokens kept, 4 per rank level,
        # so the kept set never depends on how equal ranks of different partitions are ordered
        "lagkv": (LagKVPress(compression_ratio=RATIO, n_sink=4, lag_size=16), "sdpa"),
    }
    model = tiny_model("sdpa")
    model.save_pretrained(out / "tiny-llama")
    fixtures = {
        "kvpress_version": version("kvpress"),
        "transformers_version": transformers.__version__,
        "input_ids": ids[0].tolist(),
        "compression_ratio": RATIO,
        "kept": {},
    }
    for name, (press, attn) in presses.items():
        model = tiny_model(attn)
        full = run(model, ids, None)
        compressed = run(model, ids, press)
        fixtures["kept"][name] = [kept_positions(f, c)[0].tolist() for f, c in zip(full, compressed)]
    # KVzip: per-head (and, by default, per-layer) counts vary, so its records are separate;
    # chunk_size 32 makes the 96-token context take three reconstruction passes
    save_char_tokenizer(out / "tiny-llama")
    fixtures["kvzip"] = {}
    kvzip_presses = {
        "kvzip": KVzipPress(compression_ratio=RATIO),
        "kvzip_layerwise": KVzipPress(compression_ratio=RATIO, layerwise=True),
        "kvzip_chunked": KVzipPress(compression_ratio=RATIO, chunk_size=32),
    }
    for name, press in kvzip_presses.items():
        model = tiny_model("sdpa")
        model.config.name_or_path = str(out / "tiny-llama")
        kept, fed = kvzip_kept(model, ids, press)
        fixtures["kvzip"][name] = {"chunk_size": press.chunk_size, "layerwise": press.layerwise,
                                   "sinks": press.n_sink, "kept": kept, "reconstruction_ids": fed}
    (out / "kept_indices.json").write_text(json.dumps(fixtures))
    print(f"wrote {out / 'kept_indices.json'} with {', '.join(fixtures['kept'])}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/kvpress")
