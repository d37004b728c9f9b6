"""benchmarks/: every script is in the index (benchmarks/README.md), every path the index and the
suites name exists, and no script reaches into the library (private names, replaced functions)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(
    p for p in BENCHMARKS.rglob("*") if p.suffix in {".py", ".sh"} and "results" not in p.relative_to(BENCHMARKS).parts
    and ".venv" not in p.parts
)  # fmt: skip
INDEX = (BENCHMARKS / "README.md").read_text()


def test_every_script_is_in_the_index():
    missing = [str(p.relative_to(BENCHMARKS)) for p in SCRIPTS if p.name not in INDEX]
    assert not missing, f"add these to benchmarks/README.md: {missing}"


def test_every_benchmarks_path_named_in_the_index_suites_and_results_exists():
    texts = {BENCHMARKS / "README.md": INDEX}
    texts.update({p: p.read_text() for p in SCRIPTS if p.suffix == ".sh"})
    texts.update({p: p.read_text() for p in (BENCHMARKS / "results").rglob("*.md")})
    named = {
        (path, m.group(0))
        for path, text in texts.items()
        for m in re.finditer(r"(?<![\w/.-])benchmarks/[\w./-]+\.(?:py|sh|c|md)\b", text)
    }
    gone = sorted(f"{path.relative_to(ROOT)}: {name}" for path, name in named if not (ROOT / name).exists())
    assert not gone, gone


def library_reaches(source: str) -> list[str]:
    """Imports of private restkv names, and assignments to attributes of restkv modules or of
    what was imported from them (a class's methods)."""
    found = []
    tree = ast.parse(source)
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.split(".")[0] == "restkv"}  # fmt: skip
    modules |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] == "restkv" for alias in node.names}  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "restkv":
            found += [f"imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
        for target in targets:
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in modules | {"restkv"}:
                found.append(f"assigns {ast.unparse(target)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in modules | {"restkv"}:
                found.append(f"setattr on {node.args[0].id}")
    return found


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.suffix == ".py"], ids=lambda p: p.name)
def test_no_script_imports_private_names_or_replaces_library_functions(script):
    assert library_reaches(script.read_text()) == []


def test_the_reach_check_sees_what_it_forbids():
    assert library_reaches("from restkv.eval.report import _fmt") == ["imports restkv.eval.report._fmt"]
    assert library_reaches("import restkv.press\nrestkv.press.recompress_chunk = None") == [
        "assigns restkv.press.recompress_chunk"
    ]
    assert library_reaches("import restkv.eval.engine as e\nsetattr(e, 'stack_caches', None)") == ["setattr on e"]
    assert library_reaches("from restkv.eval.engine import Engine\nEngine.decode = print") == ["assigns Engine.decode"]
    assert library_reaches("from restkv.eval.report import format_cell\nx = format_cell(1.0)") == []
