"""Robustness, round three (issue 35): the findings fixed so far, each with its test."""

import pytest

from restkv.cli import EXIT_USAGE, main


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "passkey", "--out", "x", "--budgets", ","],
        ["eval", "passkey", "--out", "x", "--methods", ","],
        ["eval", "passkey", "--out", "x", "--ratios", " , "],
        ["bench", "latency", "--out", "x", "--lengths", ","],
        ["leaderboard", "--out", "x", "--methods", ","],
    ],
)
def test_an_empty_list_argument_is_refused_not_run_as_nothing(argv, capsys):
    """Finding 4: `--budgets ,` ran "0 samples" and exited 0."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE
    assert "expected a comma-separated list of at least one item" in capsys.readouterr().err


def test_an_eval_with_no_prompts_to_build_exits_2_saying_so(tmp_path, monkeypatch, capsys):
    """Finding 4: `restkv eval ruler --length 512` named the tasks it could not build, then exited 0."""
    from dataclasses import replace

    from restkv.eval.tasks import registry

    empty = replace(registry.FAMILIES["passkey"], groups=lambda loaded, options: [])
    monkeypatch.setitem(registry.FAMILIES, "passkey", empty)
    assert main(["eval", "passkey", "--samples", "1", "--budgets", "64", "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert "nothing to evaluate: passkey built no prompts" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.sqlite").exists()


def test_loading_an_empty_context_file_is_one_sentence(tmp_path, capsys):
    """Finding 11: `restkv chat --load` of an empty file raised IndexError from the error handler itself."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["chat", "--load", str(empty)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{empty} is not a saved restkv context" in err and "Traceback" not in err


def post(port: int, route: str, body) -> tuple[int, dict]:
    """POST ``body`` as JSON; the status and the decoded answer (errors included)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{route}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_server_refuses_what_it_cannot_answer_as_asked_and_keeps_serving():
    """Findings 3 and 10: max_tokens 0 or -5 answered 200 and empty after a whole prefill; a body
    without messages, or with messages "hi", answered 500 with a traceback in the log."""
    from restkv import get_press
    from restkv.serve.server import ServedModel
    from tiny_models import TinyLoaded

    loaded = TinyLoaded("llama")
    loaded.model.set_attn_implementation("sdpa")
    server = ServedModel(loaded, get_press("snapkv", budget=40, window_size=8), page_size=16, num_blocks=64)
    port = server.start()
    try:
        chat, completion = "/v1/chat/completions", "/v1/completions"
        refused = [
            (completion, {"model": server.name, "prompt": "abcdefgh" * 8, "max_tokens": 0}, "max_tokens must be"),
            (completion, {"model": server.name, "prompt": "abcdefgh" * 8, "max_tokens": -5}, "max_tokens must be"),
            (chat, {"model": server.name}, "messages must be a non-empty list"),
            (chat, {"model": server.name, "messages": "hi"}, "messages must be a non-empty list"),
            (chat, {"model": server.name, "messages": []}, "messages must be a non-empty list"),
            (completion, {"model": server.name, "max_tokens": 4}, "prompt must be a non-empty"),
        ]
        for route, body, message in refused:
            status, answer = post(port, route, body)
            assert status == 400 and message in answer["detail"], (body, status, answer)
        status, answer = post(port, completion, {"model": server.name, "prompt": "abcdefgh" * 8, "max_tokens": 3})
        assert status == 200 and answer["choices"][0]["text"]
    finally:
        server.stop()
