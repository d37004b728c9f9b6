"""``vllm serve`` with the plugin answers OpenAI chat requests with eviction (a server on loopback,
started as a user would from the vLLM environment)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CONFIG = {"restkv": {"method": "restkv", "budget": 128}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    vllm = Path(sys.executable).parent / "vllm"
    command = [
        str(vllm), "serve", model_path, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--max-model-len", "2048", "--block-size", "32", "--no-enable-prefix-caching",
        "--served-model-name", "smollm2", "--additional-config", json.dumps(CONFIG),
    ]  # fmt: skip
    # the engine still runs in its own process; its one worker runs inside it (vLLM's CPU build turns
    # distributed_executor_backend 'uni' into 'mp' while this is 1)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(2)
        else:
            process.kill()
            raise RuntimeError("vllm serve did not start in 600 s")
        yield base, log
        process.terminate()
        process.wait(timeout=60)


def chat(base, content, **extra):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0}
    body.update(extra)
    request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_chat_answers_with_eviction(server):
    from restkv.eval.tasks.passkey import passkey_prompt

    base, log = server
    status, body = chat(base, passkey_prompt(52917, 40, 0.3))
    assert status == 200, body
    assert "52917" in body["choices"][0]["message"]["content"]
    lines = [line for line in log.read_text().splitlines() if "restkv: request" in line]
    assert len(lines) == 1 and "keeps 128 of" in lines[0]


def test_a_request_names_its_own_method_or_gets_a_400(server):
    base, log = server
    status, _ = chat(base, "Say hello.", vllm_xargs={"restkv": json.dumps({"method": "full"})})
    assert status == 200
    status, body = chat(base, "Say hello.", vllm_xargs={"restkv": json.dumps({"method": "nope"})})
    assert status == 400 and "unknown method 'nope'" in json.dumps(body)
