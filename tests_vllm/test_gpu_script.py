"""The prepared GPU check of the plugin (benchmarks/gpu/vllm_plugin.py) runs end to end with --smoke on
vLLM's CPU build, so that the one GPU run it is written for does not fail on the script itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "vllm_plugin.py"


def test_vllm_plugin_smoke(tmp_path, model_path):
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], check=True, env=env, timeout=1200)
    report = json.loads((tmp_path / "vllm_plugin.json").read_text())
    assert report["smoke"] and report["device"] == "cpu"
    assert report["full_equals_vllm"] and report["kept_overlap"] >= 0.95
    full, restkv = report["capacity"]
    assert (full["method"], restkv["method"]) == ("full", "restkv-64")
    # a pool of 36 blocks of 32: each 400-token prompt holds 13-14 blocks with the full cache, 2-3 compressed
    assert restkv["peak_decoding"] > full["peak_decoding"]
