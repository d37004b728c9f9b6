"""The documentation site: ``mkdocs build --strict`` passes, and fails on what it must catch.

mkdocs is pinned in requirements.txt and installed in CI, so these tests never skip: a missing
package fails them like any other broken dependency.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from restkv.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "tools" / "docs_hooks"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its end of life
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_in_strict_mode(tmp_path):
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for name in subcommands(build_parser()):
        assert f'id="restkv-{name}"' in cli, name
    results = ROOT / "benchmarks" / "results"
    for folder in (p for p in results.iterdir() if p.is_dir()):  # every results folder has its page
        assert (site / "benchmarks" / "results" / folder.name / "index.html").is_file(), folder.name
    from restkv.options import RULES

    options = (site / "options" / "index.html").read_text()
    assert options.count("<tr>") == len(RULES) + 1  # the header and one row per rule, from the code
    api = (site / "reference" / "api" / "press" / "index.html").read_text()
    assert 'id="restkv.press.get_press"' in api and ":class:" not in api  # rendered, roles rewritten
    from restkv.scorers import available

    methods = (site / "methods" / "index.html").read_text()  # the README's table, included
    for name in available():
        assert f"<td><code>{name}</code></td>" in methods, name
    root = (site / "reference" / "api" / "index.html").read_text()
    assert "RestKVPress" in root and "<blockquote>" not in root  # the root docstring's doctest is code


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_the_cli_page_lists_every_subcommand_and_option():
    parser = build_parser()
    page = load_hook("cli_reference").cli_markdown(parser)
    for name, sub in subcommands(parser).items():
        assert f"## `restkv {name}` {{ #restkv-{name} }}" in page
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.dest]:
                assert f"`{flag}" in page, (name, flag)
    assert "| `--budget BUDGET` | `128` |" in page  # restkv generate's default, read from the parser


def test_docstring_markup_turns_roles_into_code_and_doctests_into_blocks():
    plain = load_hook("docstring_markup").plain
    text = "See :class:`~restkv.scorers.Scorer` and :func:`get_press`.\n\n>>> a = 1\n... b\n\nEnd."
    once = plain(text)
    assert once == "See `Scorer` and `get_press`.\n\n```pycon\n>>> a = 1\n... b\n```\n\nEnd."
    assert plain(once) == once


def test_the_reference_lists_every_root_export():
    import restkv

    page = (ROOT / "docs" / "reference" / "api" / "index.md").read_text()
    listed = set(re.findall(r"^\| \[`(\w+)`\]\[restkv\.", page, flags=re.MULTILINE))
    assert listed == set(restkv.__all__) - {"__version__"}


TINY_MODULE = '''
"""A tiny package for the strict-build tests."""


def documented():
    """Has a docstring."""


class Box:
    """A documented class."""

    def opened(self):
        """Has a docstring too."""
'''


def tiny_project(tmp_path: Path, module: str = TINY_MODULE, page: str = "", options_page: str | None = None) -> Path:
    """A one-page project with the real site's validation and mkdocstrings settings and its
    docstring and options hooks (plus an ``options.md`` when ``options_page`` is given)."""
    real = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "tiny.py").write_text(module)
    (tmp_path / "docs" / "index.md").write_text("# Tiny\n\n" + page + "\n\n::: tiny\n")
    nav = ["index.md"]
    if options_page is not None:
        (tmp_path / "docs" / "options.md").write_text(options_page)
        nav.append("options.md")
    plugin = next(p["mkdocstrings"] for p in real["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    python = plugin["handlers"]["python"]
    python["paths"] = ["."]
    python["options"]["extensions"] = [str(HOOKS / "docstring_markup.py") + ":DocstringMarkup"]
    config = {
        "site_name": "tiny",
        "docs_dir": "docs",
        "theme": real["theme"],
        "validation": real["validation"],
        "markdown_extensions": real["markdown_extensions"],
        "plugins": [{"mkdocstrings": {"handlers": {"python": python}}}],
        "hooks": [str(HOOKS / "docstrings.py"), str(HOOKS / "options_page.py")],
        "nav": nav,
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


def test_a_clean_tiny_project_builds(tmp_path):
    built = mkdocs_build(tiny_project(tmp_path), tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.mark.parametrize(
    "page,module,message",
    [
        ("[a page](missing.md)", TINY_MODULE, "missing.md"),
        ("[a section](#nowhere)", TINY_MODULE, "nowhere"),
        ("", TINY_MODULE + "\n\ndef bare():\n    pass\n", "tiny.bare has no docstring"),
        (
            "",
            TINY_MODULE + "\n    def shut(self):\n        pass\n\n\nclass Bare:\n    pass\n",
            ("tiny.Box.shut has no docstring", "tiny.Bare has no docstring"),
        ),
    ],
    ids=["broken-link", "broken-anchor", "undocumented-function", "undocumented-method-and-class"],
)
def test_the_strict_build_fails(tmp_path, page, module, message):
    built = mkdocs_build(tiny_project(tmp_path, module, page), tmp_path / "site")
    assert built.returncode != 0
    for text in (message,) if isinstance(message, str) else message:
        assert text in built.stdout + built.stderr


def test_the_options_page_without_its_marker_fails_the_build(tmp_path):
    built = mkdocs_build(tiny_project(tmp_path, options_page="# Options\n\nNo table here.\n"), tmp_path / "site")
    assert built.returncode != 0
    assert "lost its marker line" in built.stdout + built.stderr
