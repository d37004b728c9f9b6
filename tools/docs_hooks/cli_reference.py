"""mkdocs hook: the CLI reference page, written at build time from the ``restkv`` argparse parser.

The page lists every subcommand (and any nested one) with its usage line and a table of its
arguments: flags, default, choices and help, as ``restkv.cli.build_parser()`` defines them. It
is generated, never edited, so it cannot drift from the code.
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from mkdocs.structure.files import File

PAGE = "reference/cli.md"
WIDTH = 100

INTRO = """# Command line

Generated at build time from the parser in `restkv.cli` (`build_parser()`): every subcommand
with every option. `restkv <command> --help` prints the same text in a terminal.

Bad input (an unknown method, a budget not larger than the window, a missing file, a model that
cannot be loaded) prints one sentence and exits with status 2.
"""


def on_files(files, config):
    """Add the generated CLI page to the site's files."""
    src = Path(config.config_file_path).parent / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))  # document this checkout, not another installed copy
    from restkv.cli import build_parser

    files.append(File.generated(config, PAGE, content=cli_markdown(build_parser())))
    return files


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The whole page: the top-level usage, then one section per subcommand."""
    commands = list(_subcommands(parser))
    parts = [INTRO, _usage(parser), _arguments(parser), "| command | what it does |\n|---|---|"]
    parts += [f"| [`{parser.prog} {name}`](#{_anchor(parser.prog, name)}) | {_cell(_sentence(h or ''))} |" for name, _, h in commands]
    parts[-1] += "\n"
    for name, sub, help_text in commands:
        parts += _command(f"{parser.prog} {name}", sub, help_text, level=2)
    return "\n".join(part for part in parts if part)


def _command(title: str, parser: argparse.ArgumentParser, help_text: str | None, level: int) -> list[str]:
    parts = [f"{'#' * level} `{title}` {{ #{_anchor(*title.split())} }}\n"]
    for text in dict.fromkeys(filter(None, (help_text, parser.description))):  # each text once, in order
        parts.append(_cell(_sentence(text)) + "\n")
    parts += [_usage(parser), _arguments(parser)]
    for name, sub, sub_help in _subcommands(parser):
        parts += _command(f"{title} {name}", sub, sub_help, level + 1)
    return parts


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse offers no public way to list a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return "```text\n" + formatter.format_help().strip() + "\n```\n"


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    # a fixed width: the page must not depend on the terminal that builds it
    return parser.formatter_class(prog=parser.prog, width=WIDTH)


def _arguments(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser)
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.option_strings and action.nargs != 0:
            flags += " " + formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices is not None:
            help_text = (help_text + "; " if help_text else "") + "one of " + ", ".join(map(str, action.choices))
        if action.required and action.option_strings:
            help_text = "required. " + help_text
        rows.append(f"| `{flags}` | {_default(action)} | {_cell(help_text)} |")
    if not rows:
        return ""
    return "| argument | default | description |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or action.nargs == 0 or value == [] or value == ():
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return "`" + " ".join(str(value).split()).replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    """One table cell of plain text: markdown's special characters escaped, on one line."""
    text = html.escape(" ".join(text.split()), quote=False)
    for char in "\\*_[]|`":
        text = text.replace(char, "\\" + char)
    return text


def _anchor(*words: str) -> str:
    return "-".join(words)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?", ")")) else ".")
