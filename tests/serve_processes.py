"""What the serve tests share: a tiny model on SDPA, a free loopback port, and the real
``restkv serve`` command as a child process that is always stopped."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request

from tiny_models import TinyLoaded


def tiny_loaded():
    """The tiny llama of ``tiny_models`` on SDPA (continuous batching's attention)."""
    loaded = TinyLoaded("llama")
    loaded.model.set_attn_implementation("sdpa")
    return loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_command(tmp_path, *args: str, timeout: float = 120):
    """``restkv serve ARGS`` on a free port, once ``/v1/models`` answers: yields the process, its port
    and the served model's name; terminates it (killing it if it does not stop) afterwards."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "restkv", "serve", "--port", str(port), *args], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as reply:
                    name = json.loads(reply.read())["data"][0]["id"]
                break
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "restkv serve did not come up"
                time.sleep(0.5)
        yield proc, port, name
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
