"""The package's shape, as promised in docs/architecture.md: small modules,
imports that run one way, the engine reached only through the facade."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "supervisor"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's own modules that `path` imports (at module level or not)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in mods and n != "supervisor":
                found.add(n)
    return found


def test_no_module_is_too_long() -> None:
    long = {str(p.relative_to(PKG.parent)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_imports_have_no_circle() -> None:
    mods = _modules()
    graph = {m: _imports(p, mods) for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, " -> ".join(trail[trail.index(m):] + [m])
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_the_engine_is_reached_through_the_facade_only() -> None:
    mods = _modules()
    for name, path in mods.items():
        if name.startswith(("supervisor._engine", "supervisor.facade")) or \
                name == "supervisor":
            continue
        assert not any(i.startswith("supervisor._engine") for i in _imports(path, mods)), name
    health = _imports(mods["supervisor.health"], mods)
    assert not any(i.startswith("supervisor.facade") for i in health) and not any(
        i.startswith("supervisor._engine") for i in health)
