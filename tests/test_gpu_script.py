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
    for key in ("prefill_restkv_over_snapkv", "decode_speedup_over_full"):
        assert 0.1 < summary[key] < 10, key  # measured ratios, not placeholders
    assert set(summary["prefill_s"]) == {"full", "restkv", "snapkv"}
    assert summary["peak_prefill_mib"]["full"] > 0 and summary["peak_prefill_mib"]["restkv"] > 0
