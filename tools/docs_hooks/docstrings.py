"""mkdocs hook: every public function, class and method of the API reference has a docstring.

mkdocstrings leaves an object without a docstring out of its page without a word, so a new
public function would silently be missing from the reference. This hook finds the objects the
pages render (each ``::: identifier`` block, with its ``members`` option when one is given),
loads them statically with griffe from the python handler's ``paths``, and logs a warning for
each public function, class or method without a docstring; ``mkdocs build --strict`` then fails.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import griffe
import yaml
from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger("docstrings")

#: a ``::: identifier`` line and the indented YAML options under it
BLOCK = re.compile(r"^:::[ \t]*(?P<ident>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+\S.*\n?)*)", re.MULTILINE)

_loader: griffe.GriffeLoader | None = None


def on_config(config):
    """Start each build with a fresh loader on the python handler's search paths."""
    global _loader
    handlers = config.plugins["mkdocstrings"].config.handlers if "mkdocstrings" in config.plugins else {}
    root = Path(config.config_file_path).parent
    paths = [str((root / p).resolve()) for p in handlers.get("python", {}).get("paths", ["."])]
    _loader = griffe.GriffeLoader(search_paths=paths)
    return config


def on_page_markdown(markdown, page, config, files):
    """Warn about each undocumented public object that one of this page's ``:::`` blocks renders."""
    for match in BLOCK.finditer(markdown):
        options = (yaml.safe_load(textwrap.dedent(match["options"])) or {}).get("options", {})
        for path in undocumented(_lookup(match["ident"]), options.get("members")):
            log.warning("%s: %s has no docstring, so the API reference leaves it out", page.file.src_uri, path)
    return markdown


def _lookup(identifier: str) -> griffe.Object:
    package = identifier.split(".")[0]
    if package not in _loader.modules_collection.members:
        _loader.load(package)
        _loader.resolve_aliases(external=False)
    return _target(_loader.modules_collection.get_member(identifier))


def _target(obj):
    return obj.final_target if obj.is_alias else obj


def undocumented(obj: griffe.Object, members: list[str] | bool | None = None) -> list[str]:
    """Paths of ``obj`` and of its public members (or of ``members``, when given) that lack a docstring.

    Only modules, classes and functions count; attributes and private or dunder names do not.
    """
    missing = [] if obj.docstring else [obj.path]
    if obj.is_function or members is False:
        return missing
    if isinstance(members, list):
        chosen = [_target(obj.members[name]) for name in members]
    else:
        chosen = [_target(m) for name, m in obj.members.items() if _public(obj, name, m)]
    for member in chosen:
        if member.is_class:
            missing += undocumented(member)
        elif member.is_function and not member.docstring:
            missing.append(member.path)
    return missing


def _public(parent: griffe.Object, name: str, member) -> bool:
    if name.startswith("_"):
        return False
    if parent.is_module and parent.exports is not None:  # ``__all__`` decides
        return name in {str(export) for export in parent.exports}
    return not member.is_alias  # what a module imports belongs to the module that defines it
