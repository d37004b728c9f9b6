"""The GPU benchmark script runs end to end on a CPU with its toy shape (--smoke)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "paper_efficiency.py"


def test_paper_efficiency_smoke(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--smoke"], check=True, capture_output=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["shape"] == "llama-tiny" and summary["length"] == 512
    assert set(summary["prefill_s"]) == {"full", "restkv", "snapkv"}
    # the ratios are the measured times' (no timing bounds: this machine is shared and noisy)
    prefill, decode = summary["prefill_s"], summary["decode_ms_per_token"]
    assert all(v > 0 for v in [*prefill.values(), *decode.values()])
    assert summary["prefill_restkv_over_snapkv"] == prefill["restkv"] / prefill["snapkv"]
    assert summary["decode_speedup_over_full"] == decode["full"] / decode["restkv"]
    # restkv and snapkv keep as many entries, but each decode time is its own measurement
    assert decode["restkv"] != decode["snapkv"]
    assert summary["peak_prefill_mib"]["full"] > 0 and summary["peak_prefill_mib"]["restkv"] > 0


LEADERBOARD = SCRIPT.parent / "leaderboard_qwen3.py"


def test_leaderboard_qwen3_smoke(tmp_path):
    """The Qwen3-8B leaderboard script's whole path (RULER's generator, restkv leaderboard, the
    table beside published scores) on a tiny random model, one task at 1K tokens."""
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"snapkv(window_size=8)@0.75": 12.5}))
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, str(LEADERBOARD), "--out", str(out), "--smoke", "--published", str(published)],
        check=True, capture_output=True,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["method"], r["ratio"]): r for r in summary["table"]}
    assert set(rows) == {("full", 0.0), ("snapkv(window_size=8)", 0.75), ("streamingllm", 0.75),
                         ("restkv(preset=agnostic,window_size=8)", 0.75)}  # fmt: skip
    assert all(r["n"] == 1 and r["low"] <= r["score"] <= r["high"] for r in rows.values())
    assert rows[("snapkv(window_size=8)", 0.75)]["kvpress_published"] == 12.5
    assert rows[("full", 0.0)]["kvpress_published"] is None
    assert (out / "leaderboard.md").is_file() and (out / "query-agnostic.png").is_file()
