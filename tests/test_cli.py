"""The command line: user errors exit with 2 and one sentence, no traceback."""

import pytest

from restkv.cli import main


@pytest.mark.parametrize(
    "argv,message",
    [
        (["generate", "--method", "nope", "hi"], "unknown method 'nope'"),
        (["generate", "--budget", "16", "hi"], "budget (16) must be larger than window_size (32)"),
        (
            ["generate", "--budget", "64", "--param", "window_size=64", "hi"],
            "budget (64) must be larger than window_size (64)",
        ),
        (["generate", "--prompt-file", "/no/such/file.txt", "hi"], "prompt file /no/such/file.txt does not exist"),
        (["generate"], "give a prompt"),
        (["generate", "   "], "the prompt is empty"),
        (["generate", "--param", "alpha", "hi"], "--param takes NAME=VALUE"),
        (["generate", "--param", "alpha=2", "hi"], "alpha must be a number in (0, 1]"),
        (["generate", "--param", "colour=red", "hi"], "restkv has no parameter colour"),
        (["generate", "--model", "/no/such/model", "hi"], "is not an embedded model"),
        (["demo", "--methods", "restkv,nope"], "unknown method 'nope'"),
        (["demo", "--budgets", "16"], "budget (16) must be larger"),
        (["report", "/no/such/run"], "has no results.sqlite"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("restkv: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--budget", "abc", "hi"],
        ["demo", "--samples", "0"],
        ["nosuchcommand"],
        ["eval", "passkey", "--out", "/tmp/never", "--batch", "0"],
        ["eval", "passkey", "--out", "/tmp/never", "--batch", "all"],
    ],
)
def test_malformed_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_methods_lists_every_method_with_defaults(capsys):
    from restkv.scorers import available

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ["full", *available()]:
        assert f"\n{name}:" in f"\n{out}"
    assert "alpha=0.3" in out and "scale=2000.0" in out


def test_models_lists_the_embedded_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "gemma3-270m" in out


def test_batch_is_auto_or_a_positive_number_of_rows():
    import argparse

    from restkv.cli.common import batch_size

    assert batch_size("auto") == "auto" and batch_size("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        batch_size("0")
