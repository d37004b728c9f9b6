"""The CLI package: one module per command, assembled into the same parser as before."""

import argparse
import subprocess
import sys

import pytest

import restkv.cli as cli
from restkv.cli import COMMANDS, EXIT_USAGE, UsageError, build_parser, main
from restkv.cli.common import method_configs, method_params

SUBCOMMANDS = [
    "methods", "models", "generate", "chat", "demo", "eval", "leaderboard", "lm-eval", "tune", "bench", "report", "compare-stores", "serve"
]  # fmt: skip


def command_name(module) -> str:
    """A command module's subcommand: its name, with - for _ (restkv.cli.lm_eval is lm-eval)."""
    return module.__name__.rsplit(".", 1)[1].replace("_", "-")


def subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_command_module_exposes_add_parser_and_run():
    assert [command_name(m) for m in COMMANDS] == SUBCOMMANDS
    for module in COMMANDS:
        assert callable(module.add_parser) and callable(module.run), module.__name__


def test_parser_has_the_same_subcommands_each_running_its_module():
    choices = subparsers(build_parser())
    assert list(choices) == SUBCOMMANDS
    for module in COMMANDS:
        assert choices[command_name(module)].get_default("run") is module.run


def test_exit_code_and_error_type_are_re_exported():
    assert EXIT_USAGE == 2 and issubclass(UsageError, ValueError)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "nope", "--out", "x"], "unknown task 'nope'; available: ruler, ruler-handwritten, niah, fidelity"),
        (["eval", "passkey", "--out", "x", "--data-dir", "/no/such/dir"], "--data-dir /no/such/dir is not a folder"),
        (["eval", "passkey", "--out", "x", "--param", "restkv.alpha"], "--param takes METHOD.NAME=VALUE"),
        (["eval", "passkey", "--out", "x", "--param", "alpha=0.5"], "--param takes METHOD.NAME=VALUE"),
        (
            ["eval", "passkey", "--out", "x", "--methods", "restkv", "--param", "snapkv.alpha=0.5"],
            "--param names snapkv, which is not in --methods",
        ),
        (["tune", "--out", "p.json", "--budget", "8"], "--budget (8) must be larger than the smallest window tried"),
        (["tune", "--out", "p.json", "--calibration", "/no/file.jsonl"], "calibration file /no/file.jsonl does not"),
        (["bench", "latency", "--out", "x", "--layers", "2"], "--layers goes with --shape"),
        (["bench", "latency", "--out", "x", "--chunk-size", "16"], "--chunk-size (16) must be larger than window_size"),
    ],
)
def test_command_errors_before_any_model_is_loaded(argv, message, capsys, monkeypatch):
    import restkv.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the arguments are checked")

    monkeypatch.setattr(restkv.models, "load_model", no_loading)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("restkv: error: ") and message in err and err.count("\n") == 1


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.methods, "run", interrupted)
    assert main(["methods"]) == 130
    assert "restkv: interrupted after" in capsys.readouterr().err


def test_method_configs_expand_budgets_merge_params_and_drop_duplicates():
    configs = method_configs(
        ["full", "restkv[alpha=0.7]", "snapkv", "full"], [64, 128], ["restkv.alpha=0.5", "restkv.window_size=16"]
    )
    assert [(c.method, c.budget) for c in configs] == [
        ("full", None), ("restkv", 64), ("restkv", 128), ("snapkv", 64), ("snapkv", 128),
    ]  # fmt: skip
    assert dict(configs[1].params) == {"alpha": 0.7, "window_size": 16}  # inline beats --param
    assert method_params(["window_size=16", "chunked=true", "name=x=y"]) == {
        "window_size": 16, "chunked": True, "name": "x=y",
    }  # fmt: skip


def test_ratios_add_one_config_per_compression_ratio_and_bad_ratios_exit_2(capsys):
    configs = method_configs(["full", "snapkv"], [], None, ratios=[0.5, 0.75])
    assert [(c.method, c.budget, dict(c.params)) for c in configs] == [
        ("full", None, {}), ("snapkv", None, {"compression_ratio": 0.5}), ("snapkv", None, {"compression_ratio": 0.75}),
    ]  # fmt: skip
    assert configs[1].label == "snapkv(compression_ratio=0.5)" and configs[1].press().compression_ratio == 0.5
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "passkey", "--out", "x", "--ratios", "0.5,1.5"])
    assert exit_.value.code == 2
    assert "a compression ratio is a number between 0 and 1, got '1.5'" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["restkv", "restkv.cli"])
def test_python_dash_m_runs_the_command(module):
    done = subprocess.run([sys.executable, "-m", module, "models"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "smollm2-135m-instruct" in done.stdout


def test_sigterm_runs_every_finally_and_exits_143(monkeypatch, capsys):
    import os
    import signal

    cleaned = []

    def terminated(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 1)  # the handler raises before this wait ends
        finally:
            cleaned.append(True)

    monkeypatch.setattr(cli.methods, "run", terminated)
    assert main(["methods"]) == 143
    assert cleaned == [True] and "restkv: stopped by SIGTERM after" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the process's own handler is back
