"""The vLLM tests: vLLM's CPU build on the embedded SmolLM2, one engine per test module.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that tests can read
what the plugin recorded inside the model runner.
"""

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import contextlib  # noqa: E402
import gc  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def engine(model_path, **settings):
    """An in-process ``LLM`` that is shut down on exit, with vLLM's distributed state, so that the
    next test module can build its own."""
    from vllm import LLM
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm = LLM(model=model_path, **settings)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()


@pytest.fixture(scope="session")
def model_path():
    """The embedded SmolLM2 as a plain model folder (restkv converts it on first use)."""
    from restkv.models import DEFAULT_MODEL, load_model, restkv_home

    folder = restkv_home() / "models" / DEFAULT_MODEL
    if not (folder / "config.json").is_file():
        load_model(DEFAULT_MODEL)
    return str(folder)


def passkey_prompts(model_path, count: int, length: int, seed: int = 0) -> list[list[int]]:
    """restkv's built-in pass-key prompts as chat-templated token ids of at most ``length`` tokens."""
    from transformers import AutoTokenizer

    from restkv.eval.tasks.passkey import passkey_samples

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(text):
        chat = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def count_tokens(text):
        return len(tokenizer(encode(text), add_special_tokens=False)["input_ids"])

    samples = passkey_samples(count, length, count_tokens, seed)
    return [tokenizer(encode(s.prompt), add_special_tokens=False)["input_ids"] for s in samples]


def press_answers(model_path, prompts, settings, max_tokens: int, tmp_path) -> list[list[int]]:
    """Greedy tokens of restkv's press on transformers (the main environment's Python, in a subprocess)."""
    import json
    import subprocess
    from pathlib import Path

    here = Path(__file__).parent
    python = os.environ.get("RESTKV_MAIN_PYTHON", str(here.parent / ".venv" / "bin" / "python"))
    request, out = tmp_path / "press_request.json", tmp_path / "press_answers.json"
    request.write_text(json.dumps({"model": model_path, "prompts": prompts, "settings": settings, "max_tokens": max_tokens}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    subprocess.run([python, str(here / "press_answers.py"), str(request), str(out)], check=True, env=env, timeout=900)
    return json.loads(out.read_text())
