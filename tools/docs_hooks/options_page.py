"""mkdocs hook: the table of option combinations, generated at build time from ``restkv.options``.

``docs/options.md`` holds the page's text and one marker line; the hook replaces the marker with
``restkv.options.combination_table_markdown()``, the table rendered from the same rules the code
checks, so the page cannot drift from them. A page without the marker, or a package without
the function, is a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("options_page")

PAGE = "options.md"
MARKER = "<!-- the table: restkv.options.combination_table_markdown() -->"


def on_page_markdown(markdown, page, config, files):
    """Put the generated table where the options page has its marker."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s has lost its marker line %s, so it shows no table", PAGE, MARKER)
        return markdown
    src = Path(config.config_file_path).parent / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))  # document this checkout, not another installed copy
    try:
        from restkv.options import combination_table_markdown
    except ImportError as err:
        log.warning("%s: restkv.options.combination_table_markdown cannot be imported (%s)", PAGE, err)
        return markdown
    return markdown.replace(MARKER, combination_table_markdown())
