"""griffe extension for the API reference: reST habits in docstrings become Markdown.

restkv's docstrings name other objects the Sphinx way (``:class:`~restkv.scorers.Scorer```,
``:func:`get_press```) and show examples as doctest lines (``>>> press = ...``); mkdocstrings
renders Markdown, where a role would show as literal text and ``>>>`` would start a quote. A
role becomes the code span of its target (only the last name with ``~``), and a run of doctest
lines a fenced code block.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc):`(?P<tilde>~?)(?P<target>[^`]+)`")
#: consecutive lines that start (after the same indentation) with ``>>>`` or ``...``
DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>>.*(?:\n(?P=indent)(?:>>>|\.\.\.).*)*", re.MULTILINE)


def plain(text: str) -> str:
    """``text`` with each Sphinx role a Markdown code span and each doctest run a code block."""

    def span(match: re.Match) -> str:
        target = match["target"]
        return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"

    def fence(match: re.Match) -> str:
        indent = match["indent"]
        if match.string[: match.start()].endswith("```pycon\n"):
            return match[0]  # fenced already: rewriting twice changes nothing
        return f"{indent}```pycon\n{match[0]}\n{indent}```"

    return DOCTEST.sub(fence, ROLE.sub(span, text))


class DocstringMarkup(griffe.Extension):
    """Rewrite every docstring once the object tree is built."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        _rewrite(obj)

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        _rewrite(pkg)  # griffe fires on_object for members only, not for the package itself


def _rewrite(obj) -> None:
    if obj.docstring is not None:
        obj.docstring.value = plain(obj.docstring.value)
