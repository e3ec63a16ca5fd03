"""Imports point one way (DESIGN.md §4), read from the source of every module.

Function-level imports count too: a lazy import still ties two layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "durable_agent"

# What a backend may import of the library: the contract, the records and what
# they are made of, and its own siblings. The same path a custom backend takes.
BACKEND_MAY_IMPORT = (
    "durable_agent.backend",
    "durable_agent.records",
    "durable_agent.errors",
    "durable_agent.fsm",
    "durable_agent.backends",
)

# The surfaces on top, which nothing below them may import.
SURFACES = (
    "durable_agent.__main__",
    "durable_agent.cli",
    "durable_agent._cli",
    "durable_agent._demo",
    "durable_agent.ui",
)

# Modules that may name a concrete backend: the facade (db=None is a memory
# store), the registry (URL schemes), the package's lazy exports, the
# compatibility names, the surfaces and the test kit.
MAY_NAME_A_BACKEND = (
    "durable_agent.agent",
    "durable_agent.registry",
    "durable_agent.compat",
    "durable_agent.__init__",
    "durable_agent.testing",
    *SURFACES,
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "backends":  # installed as durable_agent.backends
        parts.insert(0, "durable_agent")
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = (module or _module_name(path)).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _sources() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "backends" not in p.relative_to(PACKAGE).parts]
    return sorted(files + list((ROOT / "backends").glob("*.py")))


def _starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or name.startswith(p) for p in prefixes)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path) -> None:
    module = _module_name(path)
    imported = {n for n in _imports(path) if n.startswith("durable_agent")}
    if _within(module, ("durable_agent.backends",)):
        wrong = {n for n in imported if not _within(n, BACKEND_MAY_IMPORT)}
        assert not wrong, f"backend {module} imports {sorted(wrong)} (only the contract)"
        return
    if not _starts(module, SURFACES) and not _within(module, ("durable_agent.testing",)):
        wrong = {n for n in imported if _starts(n, SURFACES)}
        assert not wrong, f"{module} imports the surfaces {sorted(wrong)}"
    if not _within(module, MAY_NAME_A_BACKEND):
        wrong = {n for n in imported if _within(n, ("durable_agent.backends",))}
        assert not wrong, f"{module} imports a concrete backend {sorted(wrong)}"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from durable_agent.backends.sqlite import SqliteBackend\n")
    assert "durable_agent.backends.sqlite" in _imports(bad, "durable_agent.engine")
