"""A leaderboard run stopped by Ctrl-C or SIGTERM still logs itself: the prompts it finished, the
wall time, and that it was interrupted (earlier, a stopped run left no line in ``runs.jsonl``)."""

import json
from types import SimpleNamespace

import pytest

import restkv.eval.protocol as protocol


def test_an_interrupted_run_logs_what_it_finished(tmp_path, monkeypatch):
    pairs = [(SimpleNamespace(name="t", score=None), SimpleNamespace(id=str(i))) for i in range(3)]
    monkeypatch.setattr(protocol, "pending", lambda loaded, pairs_, configs, store, agnostic: pairs)
    calls = []

    def sweep(*args, **kwargs):
        calls.append(args[2][0].id)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "run_sweep", sweep)
    with pytest.raises(KeyboardInterrupt):
        protocol.run_mode(None, [], [object()], tmp_path, agnostic=True, progress=False, command="restkv x")
    (line,) = (tmp_path / "runs.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert calls == ["0", "1"]
    assert record["stopped"] == "interrupted" and record["prompts_run"] == 1 and record["prompts_left"] == 2
    assert record["command"] == "restkv x" and record["wall_s"] >= 0
