"""The package layering, checked by reading every module's imports (including ones inside functions).

- goalkeeper.store imports nothing else of ours;
- goalkeeper.sandbox and goalkeeper.protocol never import goalkeeper.actors;
- goalkeeper.sandbox never imports sqlite3 or sqlite_utils;
- nothing imports our packages without the `goalkeeper.` prefix (`import store.x` would
  load a second copy of the module, with its own classes and exceptions).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "sandbox", "store", "protocol", "tools")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append(("goalkeeper." + ".".join(parts), path))
    return found


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Absolute names of everything `path` imports, with line numbers."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from . import x` may import a submodule x; count both.
            names.append((prefix, node.lineno))
            names += [(f"{prefix}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = _modules()


def test_the_walk_sees_the_tree():
    names = {m for m, _ in MODULES}
    assert {"goalkeeper.store.errors", "goalkeeper.tools.cli", "goalkeeper.store.settings"} <= names


def test_relative_imports_resolve():
    path = ROOT / "tools" / "cli.py"
    resolved = {name for name, _ in _imports("goalkeeper.tools.cli", path)}
    assert "goalkeeper.tools.context" in resolved


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_layering(module, path):
    problems = []
    for name, line in _imports(module, path):
        where = f"{path.relative_to(ROOT)}:{line} imports {name}"
        if name.split(".")[0] in PACKAGES:
            problems.append(f"{where} (use goalkeeper.{name})")
        if _under(module, "goalkeeper.store") and _under(name, "goalkeeper") \
                and not _under(name, "goalkeeper.store"):
            problems.append(f"{where} (store imports nothing else of ours)")
        if (_under(module, "goalkeeper.sandbox") or _under(module, "goalkeeper.protocol")) \
                and _under(name, "goalkeeper.actors"):
            problems.append(f"{where} (sandbox and protocol never import actors)")
        if _under(module, "goalkeeper.sandbox") and (_under(name, "sqlite3") or _under(name, "sqlite_utils")):
            problems.append(f"{where} (the sandbox never touches SQLite)")
    assert problems == []


def test_the_checks_catch_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..actors import worker\n    import store.paths\n")
    names = {n for n, _ in _imports("goalkeeper.sandbox.bad", bad)}
    assert "goalkeeper.actors.worker" in names and "store.paths" in names
