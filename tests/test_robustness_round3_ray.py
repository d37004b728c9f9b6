"""Robustness, round three (issue 35), finding 13: a Ray cluster that is not there is one
sentence, soon, and never a connection attempt that outlasts SIGTERM.

No test here starts a Ray cluster: what is checked happens before Ray would connect to one.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from restkv.cli import EXIT_USAGE, main
from tiny_models import TinyLoaded, load_tiny

TESTS = str(Path(__file__).parent)
# `restkv eval` as typed, on a tiny model instead of the default one (no download, no conversion)
DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from tiny_models import TinyLoaded
    import restkv.cli.eval as command
    command.load_from_args = lambda args: TinyLoaded()
    from restkv.cli import main
    sys.exit(main({argv!r}))
    """
)


def eval_argv(out: Path, address: str) -> list[str]:
    """The cheapest ``restkv eval`` on Ray at ``address``."""
    return ["eval", "passkey", "--samples", "1", "--methods", "full", "--budgets", "64", "--out", str(out),
            "--executor", "ray", "--address", address]  # fmt: skip


def test_a_ray_address_where_nothing_listens_is_one_sentence_within_seconds(tmp_path):
    """Finding 13: `--executor ray --address 127.0.0.1:1` said nothing for 120 s and ignored SIGTERM."""
    script = DRIVER.format(tests=TESTS, argv=eval_argv(tmp_path / "run", "127.0.0.1:1"))
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("restkv eval was still connecting to 127.0.0.1:1 after 60 s")
    assert done.returncode == EXIT_USAGE, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("restkv: error: no Ray cluster answers at 127.0.0.1:1 (Connection refused); ")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "results.sqlite").exists()  # refused before the store was opened
    print(f"exit 2 after {time.monotonic() - start:.1f} s")


def test_a_named_cluster_is_checked_with_a_bounded_connect_when_the_executor_is_made(monkeypatch):
    """Finding 13: the address, given or in RAY_ADDRESS, is tried with a TCP connect that has a timeout."""
    from restkv.eval import jobs

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # what Ray itself reads for auto
    for address in ("127.0.0.1:1", "auto", "ray://127.0.0.1:1"):
        with pytest.raises(ValueError, match=r"^no Ray cluster answers at \S*127\.0\.0\.1:1 \(.+\); "):
            jobs.RayExecutor(load_tiny, address=address)
    timeouts = []

    def silent(host_port, timeout=None):  # a host that drops the connection attempt
        timeouts.append(timeout)
        raise TimeoutError("timed out")

    with monkeypatch.context() as patch:
        patch.setattr(jobs.socket, "create_connection", silent)
        with pytest.raises(ValueError, match=r"^no Ray cluster answers at 10\.1\.2\.3:6379 \(timed out\); "):
            jobs.RayExecutor(load_tiny, address="10.1.2.3:6379")
    assert timeouts == [jobs.CONNECT_TIMEOUT_S] and 0 < jobs.CONNECT_TIMEOUT_S <= 10
    with socket.create_server(("127.0.0.1", 0)) as server:  # something answers: made, nothing joined yet
        jobs.RayExecutor(load_tiny, address=f"127.0.0.1:{server.getsockname()[1]}")


def test_address_auto_with_no_cluster_is_one_sentence_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Finding 13: `--address auto` with no cluster running ended in Ray's ConnectionError traceback."""
    import ray

    import restkv.cli.eval as command

    def no_cluster(**kwargs):  # what ray.init(address="auto") raises on a machine with no cluster (ray 2.60)
        assert kwargs["address"] == "auto"
        raise ConnectionError(
            "Could not find any running Ray instance. Please specify the one to connect to by setting "
            "`--address` flag or `RAY_ADDRESS` environment variable."
        )

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(command, "load_from_args", lambda args: TinyLoaded())
    monkeypatch.setattr(ray, "init", no_cluster)  # not the real one: a cluster elsewhere on this machine would answer
    assert main(eval_argv(tmp_path / "run", "auto")) == EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "restkv: error: found no running Ray cluster for --address auto; start one with `ray start --head` "
        "or give its host:port"
    )
