"""restkv bench: shapes and schema of the measurements (speed itself is never asserted)."""

import pytest

from restkv.bench import latency
from restkv.bench.runner import run_latency, run_memory
from restkv.bench.shapes import SHAPES, random_model
from restkv.eval.report import render_report
from restkv.eval.store import ResultStore
from restkv.specs import MethodConfig
from tiny_models import tiny_model

CONFIGS = [
    MethodConfig.make("full"),
    MethodConfig.make("restkv", 24, window_size=8),
    MethodConfig.make("snapkv", 24, window_size=8),
]


def test_latency_rows_and_report(tmp_path):
    model = tiny_model("llama")
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_latency(model, "tiny", [64, 128], CONFIGS, store, repeats=2, decode_tokens=3)
        rows = store.rows(task="bench-latency")
        assert len(rows) == 6
        for row in rows:
            assert row["prefill_s"] > 0 and row["decode_ms_per_token"] > 0
            low, high = row["extra"]["prefill_min_max"]
            assert low <= row["prefill_s"] <= high and row["extra"]["repeats"] == 2
        run_latency(model, "tiny", [64, 128], CONFIGS, store, repeats=2, decode_tokens=3)  # resumes: nothing new
        assert store.count() == 6
    text = render_report(tmp_path).read_text()
    assert "## bench-latency" in text and "| 128 | restkv(window_size=8) | 24 |" in text
    assert (tmp_path / "bench-latency.png").is_file()


def test_synthetic_cache_has_the_sizes_a_press_leaves():
    model = tiny_model("gemma3_text")
    cache = latency.synthetic_cache(model, 300, 40)
    sizes = [layer.keys.shape[2] for layer in cache.layers]
    assert sizes == [15, 40, 40]  # the sliding layer keeps its window - 1
    assert set(cache.restkv_state.layers) == {1, 2}
    assert latency.measure_decode(model, 300, 40, steps=2, repeats=1)[0] > 0


def test_memory_probe_runs_in_a_fresh_process(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    spec = {"model": str(tmp_path / "tiny"), "weights_only": True, "decode_tokens": 2}
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_memory(spec, "tiny", [128], CONFIGS[:2], store)
        rows = store.rows(task="bench-memory")
    assert len(rows) == 2
    for row in rows:
        extra = row["extra"]
        assert extra["prefill_peak_mib"] >= extra["baseline_mib"] > 0 and extra["decode_peak_mib"] > 0
    text = render_report(tmp_path).read_text()
    assert "## bench-memory" in text


def test_memory_rows_of_quantized_caches_count_their_bytes(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    base = {"model": str(tmp_path / "tiny"), "weights_only": True, "decode_tokens": 2}
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_memory(base, "tiny", [256], CONFIGS[:2], store)
        run_memory({**base, "kv_quant": "hqq:4"}, "tiny", [256], CONFIGS[:2], store)
        rows = {r["method"]: r for r in store.rows(task="bench-memory")}
    plain, quant = CONFIGS[1].label, f"{CONFIGS[1].label}+hqq4"
    assert set(rows) == {"full", "full+hqq4", plain, quant}
    assert rows["full+hqq4"]["kv_bytes"] < rows["full"]["kv_bytes"] / 3
    assert rows[quant]["kv_bytes"] < rows[plain]["kv_bytes"] / 3


def test_random_model_shapes():
    model = random_model("qwen2.5-7b", layers=1, dtype="bfloat16", device="meta")
    assert model.config.num_hidden_layers == 1 and model.config.num_key_value_heads == 4
    assert set(SHAPES) == {"llama-3.1-8b", "mistral-7b", "qwen2.5-7b"}
    with pytest.raises(ValueError, match="unknown shape"):
        random_model("gpt-5")


def test_decode_only_latency(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_latency(tiny_model("llama"), "tiny", [64], CONFIGS[:2], store, repeats=1, decode_tokens=2, prefill=False)
        rows = store.rows()
    assert [r["prefill_s"] for r in rows] == [None, None] and all(r["decode_ms_per_token"] > 0 for r in rows)
    assert "bench-latency" in render_report(tmp_path).read_text()


def test_prefill_timings_take_turns_between_presses():
    import contextlib

    calls = []

    class Recorder:
        chunk_size = None

        def __init__(self, name):
            self.name = name

        def __call__(self, model):
            calls.append(self.name)
            return contextlib.nullcontext()

    times = latency.measure_prefills(tiny_model("llama"), 16, [Recorder("a"), Recorder("b")], repeats=2)
    assert calls == ["a", "b"] * 3  # one warm-up each, then alternating repeats
    assert [len(t) for t in times] == [2, 2] and all(x > 0 for t in times for x in t)


def test_latency_with_compile_reports_both_paths(tmp_path, monkeypatch):
    """The runner's rows for --compile (the step is run eagerly here: compiling itself is tested in
    test_static_decode.py, and would cost a minute per buffer size)."""
    from restkv import static_decode

    monkeypatch.setattr(static_decode, "compiled_step", lambda: static_decode._step)
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_latency(tiny_model("llama"), "tiny", [64], CONFIGS[:2], store, repeats=2, decode_tokens=3, compile=True)
        rows = {r["method"]: r for r in store.rows()}
        run_latency(tiny_model("llama"), "tiny", [64], CONFIGS[:2], store, repeats=2, decode_tokens=3, compile=True)
        assert store.count() == 4  # resumes: nothing new
    label = CONFIGS[1].label
    assert set(rows) == {"full", "full+compiled", label, f"{label}+compiled"}
    compiled = rows[f"{label}+compiled"]["extra"]
    assert compiled["first_step_s"] > 0 and compiled["eager_decode_ms_per_token"] == rows[label]["decode_ms_per_token"]
    assert compiled["repeats"] == 2 and rows[f"{label}+compiled"]["decode_ms_per_token"] > 0


def test_each_config_gets_its_own_decode_measurement(tmp_path, monkeypatch):
    """restkv and snapkv at the same budget keep as many entries, but each row's decode time is a
    measurement of its own, never one number under two methods' names."""
    measured = []
    real = latency.measure_decode_paths

    def counting(model, length, entries, *args, **kwargs):
        measured.append(entries)
        return real(model, length, entries, *args, **kwargs)

    monkeypatch.setattr(latency, "measure_decode_paths", counting)
    with ResultStore(tmp_path / "results.sqlite") as store:
        run_latency(tiny_model("llama"), "tiny", [64], CONFIGS, store, repeats=1, decode_tokens=2, prefill=False)
        rows = store.rows()
    assert sorted(measured, key=str) == sorted([None, 24, 24], key=str)
    restkv, snapkv = (next(r for r in rows if r["method"] == c.label) for c in CONFIGS[1:])
    assert restkv["extra"]["decode_min_max"] is not snapkv["extra"]["decode_min_max"]


def test_bench_command_prints_its_table(tmp_path, capsys, monkeypatch):
    from restkv.bench import runner
    from restkv.cli import main

    monkeypatch.setattr(runner, "bench_model", lambda *args: tiny_model("llama"))
    argv = ["bench", "latency", "--model", "tiny", "--lengths", "64", "--methods", "full,snapkv",
            "--budgets", "40", "--repeats", "1", "--decode-tokens", "2", "--no-prefill", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| length | method | budget | prefill s |" in out
    assert "| 64 | full | all |" in out and "| 64 | snapkv | 40 |" in out
