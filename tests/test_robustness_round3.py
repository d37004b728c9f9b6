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
