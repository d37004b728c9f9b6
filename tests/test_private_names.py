"""Only ``restkv/_compat/`` touches other projects' private names; everything else goes through it.

The walker reads restkv's source with ``ast``. A private name is ``_name`` (not a dunder); it is
restkv's own when restkv's source defines it: a function, method or class of that name, a
module- or class-level assignment, or a ``self._name = ...`` / ``cls._name = ...`` in a method.
(So a subclass of an outside class that assigns an inherited private field passes; one that
only reads it, as ``self._cb_config`` in a serving manager, does not.) Outside ``_compat`` it
flags:

* ``x._name`` and ``getattr/setattr/hasattr/delattr(x, "_name")`` for a ``_name`` not restkv's;
* imports of private modules or names of the outside packages (``import torch._dynamo``,
  ``from transformers.x import _y``, ``importlib.import_module("torch._inductor")``);
* any use of ``sys.modules`` (how a model family's private modeling module is reached).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "restkv"
COMPAT = SRC / "_compat"
#: the outside projects whose private names only ``_compat`` may touch
PACKAGES = ("transformers", "torch", "lm_eval", "uvicorn", "accelerate")
_ATTRIBUTE_FUNCTIONS = ("getattr", "setattr", "hasattr", "delattr")


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def own_names(trees) -> set[str]:
    """Every private-looking name restkv's own source defines (see the module docstring)."""
    names = set()
    for tree in trees:
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
        for scope in scopes:  # module- and class-level assignments
            for statement in scope.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else (
                    [statement.target] if isinstance(statement, (ast.AnnAssign, ast.AugAssign)) else [])  # fmt: skip
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):  # fmt: skip
                names.add(node.attr)
    return {name for name in names if is_private(name)}


def _private_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] in PACKAGES and any(is_private(part) for part in parts)


def violations(tree, own: set[str], filename: str = "<source>") -> list[str]:
    """``file:line: what`` for every private name of an outside project ``tree`` touches."""
    found = []

    def flag(node, what):
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if is_private(node.attr) and node.attr not in own:
                flag(node, f"private attribute {ast.unparse(node)}")
            if node.attr == "modules" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                flag(node, "sys.modules")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _ATTRIBUTE_FUNCTIONS:
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                if is_private(name.value) and name.value not in own:
                    flag(node, f"{node.func.id}(..., {name.value!r})")
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            function = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            target = node.args[0] if node.args else None
            if function in ("import_module", "__import__") and isinstance(target, ast.Constant):
                if isinstance(target.value, str) and _private_module(target.value):
                    flag(node, f"{function}({target.value!r})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _private_module(alias.name):
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if module == "sys" and any(alias.name == "modules" for alias in node.names):
                flag(node, "from sys import modules")
            if module.split(".")[0] not in PACKAGES:
                continue
            if _private_module(module):
                flag(node, f"from {module} import ...")
            for alias in node.names:
                if is_private(alias.name):
                    flag(node, f"from {module} import {alias.name}")
    return found


def source_trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), filename=str(path)) for path in sorted(SRC.rglob("*.py"))}


def outside_compat(path: Path) -> bool:
    return COMPAT not in path.parents


def test_no_module_outside_compat_touches_another_projects_private_names():
    trees = source_trees()
    own = own_names([tree for path, tree in trees.items() if outside_compat(path)])
    found = [v for path, tree in trees.items() if outside_compat(path)
             for v in violations(tree, own, str(path.relative_to(SRC)))]  # fmt: skip
    assert not found, "use (or add) a function in restkv/_compat/ instead:\n" + "\n".join(found)


def test_the_compat_package_is_where_the_private_names_are():
    # the walker run on _compat itself must find them: otherwise it is blind, not the source clean
    trees = source_trees()
    own = own_names([tree for path, tree in trees.items() if outside_compat(path)])
    found = "\n".join(v for path, tree in trees.items() if not outside_compat(path) for v in violations(tree, own))
    for expected in ("_create_batch_processor", "_quantized_keys", "torch._inductor", "torch._dynamo",
                     "_attn_implementation", "sys.modules", "_hf_hook", "_cb_config"):  # fmt: skip
        assert expected in found, expected


PLANTED = """
import sys
import torch._dynamo
from transformers.cache_utils import _private_helper
from transformers.models._internal import Thing
from transformers.cli.serving.utils import CBGenerateManager
import importlib

class Manager(CBGenerateManager):
    def start(self):
        return self._cb_config       # read, never assigned by restkv: the outside class's field

def use(config, layer, module, other):
    other._assigned_elsewhere = 1  # stored on another object: does not make the name restkv's
    other._assigned_elsewhere.run()
    limit = torch._dynamo.config.recompile_limit
    name = getattr(config, "_attn_implementation", None)
    payload = layer._quantized_keys
    family = sys.modules[type(module).__module__]
    importlib.import_module("torch._inductor.config")
    return limit, name, payload, family
"""

CLEAN = """
from transformers import DynamicCache

class Mine:
    _registry = {}

    def __init__(self):
        self._lengths = []

    def _helper(self):
        return self._lengths, self.__class__, Mine._registry

def use(other: Mine, cache: DynamicCache):
    return other._helper(), other._lengths, getattr(other, "_lengths"), cache.layers
"""


def test_the_walker_catches_each_kind_of_planted_violation():
    tree = ast.parse(PLANTED)
    found = "\n".join(violations(tree, own_names([tree])))
    for expected in ("import torch._dynamo", "import _private_helper", "from transformers.models._internal",
                     "private attribute torch._dynamo", "'_attn_implementation'", "layer._quantized_keys", "sys.modules",
                     "import_module('torch._inductor.config')", "self._cb_config",
                     "private attribute other._assigned_elsewhere"):  # fmt: skip
        assert expected in found, f"{expected} not caught in:\n{found}"


def test_the_walker_leaves_restkvs_own_private_names_alone():
    tree = ast.parse(CLEAN)
    assert violations(tree, own_names([tree])) == []


def test_a_name_defined_only_in_another_restkv_module_counts_as_own():
    definer, user = ast.parse("class A:\n    def _seam(self):\n        pass\n"), ast.parse("def f(a):\n    a._seam()\n")
    assert violations(user, own_names([user])) != []
    assert violations(user, own_names([definer, user])) == []
