"""The sandbox's import rules: never actors or SQLite; the child side only the stdlib,
prctl, pyseccomp and its own spec/_linux."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SANDBOX = Path(__file__).parents[2] / "sandbox"
CHILD_SIDE = {"child.py": {"spec", "_linux"}, "_linux.py": set(), "spec.py": set()}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: name the sibling module(s)
                names.update("." + (node.module or alias.name) for alias in node.names)
            else:
                names.add(node.module)
    return names


def test_sandbox_never_imports_actors_or_sqlite():
    for path in SANDBOX.glob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in {"sqlite3", "sqlite_utils", "pykka"}, (path.name, name)
            assert not name.startswith("goalkeeper.actors"), (path.name, name)


def _module_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            names.update("." + (node.module or alias.name) for alias in node.names)
    return names


def test_child_loads_builtin_builders_only_for_builtin_builds():
    """The one exception: a builtin builder's code, imported where the child runs one."""
    assert ".builtins" in _imports(SANDBOX / "child.py")
    assert ".builtins" not in _module_level_imports(SANDBOX / "child.py")


def test_child_side_imports_only_stdlib_prctl_and_its_spec():
    for filename, siblings in CHILD_SIDE.items():
        for name in _imports(SANDBOX / filename) - {".builtins"}:
            if name.startswith("."):
                assert name[1:] in siblings, (filename, name)
            else:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "prctl", (filename, name)
