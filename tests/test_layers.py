"""The package's layers run one way: no import cycle, the core never imports the tools above it, and
``_compat`` (the doors into other projects' internals) is the lowest layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "restkv"
#: tools built on the library (and the entry point); nothing in the library proper may import them
TOOLS = ("restkv.cli", "restkv.eval", "restkv.bench", "restkv.demo", "restkv.tune", "restkv.specs", "restkv.__main__")
#: the lowest layer: the doors into other projects' internals (see ``restkv/_compat/__init__.py``)
COMPAT = "restkv._compat"
#: what a ``_compat`` module may import of restkv's, besides other ``_compat`` modules
COMPAT_MAY_IMPORT = ("restkv.checks",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every restkv module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # submodules named in the list
    if name == PACKAGE:  # the root's lazy exports
        from restkv import _EXPORTS

        found.update(f"{PACKAGE}.{m}" for m in _EXPORTS.values())
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_real_imports():
    edges = graph()
    assert "restkv.compress" in edges["restkv.press"]
    assert "restkv.scorers.base" in edges["restkv.scorers.restkv"]
    assert "restkv.eval.engine" in edges["restkv.tune"]


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_src():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_library_imports_no_tool():
    for name, targets in graph().items():
        if name.startswith(TOOLS) or name == PACKAGE:
            continue
        tools = sorted(t for t in targets if t.startswith(TOOLS))
        assert not tools, f"{name} imports {tools}"


def compat_violations(edges: dict[str, set[str]]) -> list[str]:
    """``_compat`` modules that import restkv modules above them (anything but ``_compat`` and checks)."""
    found = []
    for name, targets in sorted(edges.items()):
        above = sorted(t for t in targets if not t.startswith(COMPAT) and t not in COMPAT_MAY_IMPORT)
        if name.startswith(COMPAT) and above:
            found.append(f"{name} imports {above}")
    return found


def test_compat_is_the_lowest_layer():
    edges = graph()
    assert f"{COMPAT}.transformers_serving" in edges and f"{COMPAT}.versions" in edges[f"{COMPAT}.transformers_serving"]
    assert compat_violations(edges) == [], "_compat imports nothing of restkv's but other _compat modules and checks"


def test_the_compat_rule_catches_an_upward_import():
    edges = {
        "restkv._compat.planted": {"restkv.press", "restkv._compat.versions", "restkv.checks"},
        "restkv.press": {"restkv._compat.planted"},
    }
    assert compat_violations(edges) == ["restkv._compat.planted imports ['restkv.press']"]


@pytest.mark.parametrize("module", ["restkv.press", "restkv.generation", "restkv.eval.store", "restkv.scorers"])
def test_core_modules_import_without_engine_or_tuner(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('restkv')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert module in loaded
    for heavy in ("restkv.eval.engine", "restkv.tune", "restkv.eval.runner", "restkv.cli"):
        assert f"'{heavy}'" not in loaded, f"importing {module} loads {heavy}"


def test_the_store_loads_neither_press_nor_generate():
    code = "import sys, restkv.eval.store; print(sorted(m for m in sys.modules if m.startswith('restkv')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'restkv.press'" not in loaded and "'restkv.generation'" not in loaded


def test_the_package_exports_stay_functions_after_their_modules_are_imported():
    # a submodule named like an export would replace it on the package once imported
    import restkv
    import restkv.context  # noqa: F401  (imports the generation module)

    for name in ("generate", "generate_with_stats", "compress_context", "load_context", "get_press"):
        assert callable(getattr(restkv, name)) and not isinstance(getattr(restkv, name), type(restkv)), name
