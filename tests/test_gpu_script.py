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
    assert summary["peak_prefill_mib"]["full"] > 0 and summary["peak_prefill_mib"]["restkv"] > 0


PROTOTYPE = SCRIPT.parent / "vllm_eviction_prototype.py"


def test_vllm_eviction_prototype_smoke(tmp_path):
    """docs/serving.md's plan on a vLLM-layout pool: compaction, block tables, position offsets."""
    subprocess.run([sys.executable, str(PROTOTYPE), "--out", str(tmp_path), "--smoke"], check=True, capture_output=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] and summary["requests"] == 3 and summary["budget"] == 40
    # decoding from the compacted pool with a position offset gives the press's own tokens
    assert summary["all_match_press"]
    free = summary["pool_blocks"]
    for record in summary["records"]:
        assert record["kept"] == 40 and record["blocks_after"] == 3  # ceil(40 / 16)
        assert record["blocks_before"] == -(-record["prompt_tokens"] // 16)
        free -= record["blocks_after"]
        assert record["free_blocks_after_compaction"] == free  # the emptied blocks went back to the free list
        free -= -(-(record["kept"] + 5) // 16) - record["blocks_after"]  # blocks its 5 decode steps needed
    assert summary["blocks_freed"] == sum(r["blocks_before"] - r["blocks_after"] for r in summary["records"])


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
