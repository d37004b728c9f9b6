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
