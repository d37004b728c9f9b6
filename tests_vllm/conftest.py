"""The vLLM tests: vLLM's CPU build on the embedded SmolLM2, one engine per test module.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that tests can read
what the plugin recorded inside the model runner.
"""

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def model_path():
    """The embedded SmolLM2 as a plain model folder (restkv converts it on first use)."""
    from restkv.models import DEFAULT_MODEL, load_model, restkv_home

    folder = restkv_home() / "models" / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        load_model(DEFAULT_MODEL)
    return str(folder)
