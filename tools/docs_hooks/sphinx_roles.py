"""griffe extension for the API reference: Sphinx roles in docstrings become code spans.

restkv's docstrings name other objects the Sphinx way (``:class:`~restkv.scorers.Scorer```,
``:func:`get_press```); mkdocstrings renders Markdown, where the role would show as literal
text. A role becomes the code span of its target (only the last name with ``~``).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc):`(?P<tilde>~?)(?P<target>[^`]+)`")


def plain(text: str) -> str:
    """``text`` with each Sphinx role replaced by a Markdown code span."""

    def span(match: re.Match) -> str:
        target = match["target"]
        return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"

    return ROLE.sub(span, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring once the object tree is built."""

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
