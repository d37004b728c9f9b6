"""Peer rows into the results store (restkv.eval.peers, run by benchmarks/peers/import_rows.py) and
the OpenVINO peer's budget mapping (benchmarks/peers/openvino/measure.py, whose pure helpers need no
OpenVINO)."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from restkv.eval.peers import FAILURES_FILE, import_peer_rows, result_row
from restkv.eval.store import ResultStore

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


measure = _load("peer_openvino_measure", PEERS / "openvino" / "measure.py")


def _score(prediction, sample):
    return float(any(a in prediction for a in sample.answers))


def test_openvino_row_keeps_library_decode_and_timings_and_is_stored(tmp_path):
    row = {
        "task": "passkey", "sample_id": "pk-0", "method": "openvino-evict", "budget": 128,
        "library": "openvino-genai 2026.4.1.0", "prediction": "The pass key is 40612", "prompt_tokens": 1004,
        "kept_entries": 90 * 140, "prefill_s": 2.5, "decode_ms_per_token": 38.0, "ttft_s": 2.5,
        "peak_rss_mib": 1200.0, "setting": "evict128", "prediction_ids": [1, 2],
    }  # fmt: skip
    result = result_row(row, SimpleNamespace(answers=["40612"]), _score)
    assert result["params"]["library"] == "openvino-genai 2026.4.1.0"
    assert result["score"] == 1.0 and result["decode_ms_per_token"] == 38.0
    assert result["extra"]["peak_rss_mib"] == 1200.0 and result["extra"]["setting"] == "evict128"
    assert "prediction_ids" not in result["extra"]  # only the listed timing and memory fields travel
    with ResultStore(tmp_path / "results.sqlite", writer=True) as store:
        store.add([result])
        assert store.has("passkey", "pk-0", result["model"], "openvino-evict", 128)


def test_kvpress_row_without_the_new_fields_imports_as_before():
    row = {"task": "passkey", "sample_id": "pk-1", "method": "snapkv", "budget": 128, "prediction": "no",
           "prompt_tokens": 470, "kept_entries": 11520, "prefill_s": 0.4}  # fmt: skip
    result = result_row(row, SimpleNamespace(answers=["123"]), _score)
    assert result["params"] == {"library": "kvpress 0.5.5", "method": "snapkv"}
    assert result["score"] == 0.0 and result["decode_ms_per_token"] is None
    assert result["extra"] == {"answers": ["123"]}


def test_eviction_settings_map_our_budget_to_whole_blocks():
    s = measure.parse_setting("evict128-w32-sum")
    assert (s["budget"], s["start"], s["recent"], s["window"], s["mode"]) == (128, 32, 32, 32, "SUM")
    assert measure.parse_setting("full")["budget"] is None
    for bad in ("evict100", "evict64", "evictx", "evict128-q", "lru"):  # not whole blocks / too small / unknown
        with pytest.raises(SystemExit):
            measure.parse_setting(bad)


def test_kept_tokens_follow_the_block_rule_and_labels_name_precision():
    s = measure.parse_setting("evict128")
    assert measure.kept_tokens(1004, s) == 128 + 1004 % 32  # the last, partly filled block stays
    assert measure.kept_tokens(8192, s) == 128
    assert measure.kept_tokens(150, s) == 150  # below budget + one block: nothing evicted
    assert measure.kept_tokens(1004, measure.parse_setting("full")) == 1004
    assert measure.method_label(s, "fp32") == "openvino-evict"
    assert measure.method_label(measure.parse_setting("evict512-w32"), "int8") == "openvino-int8-evict-w32"


def test_import_scores_rows_skips_the_stored_and_keeps_failures_across_imports(tmp_path):
    samples = {("passkey", f"pk-{i}"): (SimpleNamespace(answers=[str(i)]), _score) for i in range(3)}

    def peer_row(i, prediction, **more):
        return {"task": "passkey", "sample_id": f"pk-{i}", "method": "snapkv", "budget": 128, "prediction": prediction,
                "prompt_tokens": 470, "kept_entries": 11520, "prefill_s": 0.4, **more}  # fmt: skip

    failed = peer_row(2, None, error="CUDA out of memory")
    found = import_peer_rows([peer_row(0, "it is 0"), peer_row(1, "no"), failed], samples, tmp_path)
    assert found == {"snapkv@128": {"pk-2": "CUDA out of memory"}}
    # a second import: the stored row is skipped (not an error), an earlier failure stays recorded
    again = import_peer_rows([peer_row(0, "changed"), peer_row(1, "1", error="timeout")], samples, tmp_path)
    assert again == {"snapkv@128": {"pk-1": "timeout", "pk-2": "CUDA out of memory"}}
    assert json.loads((tmp_path / FAILURES_FILE).read_text()) == again
    with ResultStore(tmp_path / "results.sqlite") as store:
        rows = {r["sample_id"]: r for r in store.rows()}
    assert set(rows) == {"pk-0", "pk-1"} and rows["pk-0"]["prediction"] == "it is 0"
    assert (rows["pk-0"]["score"], rows["pk-1"]["score"]) == (1.0, 0.0)


def test_a_row_of_a_prompt_not_exported_is_one_sentence(tmp_path):
    samples = {("passkey", "pk-0"): (SimpleNamespace(answers=["0"]), _score)}
    row = {"task": "passkey", "sample_id": "pk-7", "method": "snapkv", "budget": 128, "prediction": "7"}
    with pytest.raises(ValueError, match="matches no prompt of this task and these options"):
        import_peer_rows([row], samples, tmp_path)
