"""The import graph follows ARCHITECTURE.md: packages import only the layers below them,
and no two modules import each other, directly or around a loop (type-only imports under
TYPE_CHECKING count too: they are a dependency all the same). Pure: reads the source."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# package -> the packages it may import (ARCHITECTURE.md, "Layers"); files and home are
# the shared leaves every package may use
LEAVES = {"files", "home"}
MAY_IMPORT: dict[str, set[str]] = {
    # torpor inside agent frameworks (each an optional extra); nothing imports it. It may
    # use api's Python client: a framework's sandboxes can live on a torpor server
    "integrations": {"api", "runtime", "agent", "context", "sandbox", "snapshots", "db"},
    "cli": {"api", "dockerd", "mcp", "runtime", "agent", "context", "sandbox", "snapshots",
            "db"},
    # the MCP server (torpor mcp, /mcp in torpor serve): a front door that both cli and api
    # serve, so it sits beside them and imports neither (the api hands it a resolver)
    "mcp": {"runtime", "agent", "context", "sandbox", "snapshots", "db"},
    # the Docker Engine API front door (torpor dockerd)
    "dockerd": {"runtime", "agent", "context", "sandbox", "snapshots", "db"},
    "api": {"mcp", "runtime", "agent", "context", "sandbox", "snapshots", "db"},
    "runtime": {"agent", "context", "sandbox", "snapshots", "db"},
    "agent": {"context", "sandbox", "snapshots"},
    "context": {"db"},
    # the database layer: connections, transactions, migrations, every SQL statement
    "db": set(),
    "sandbox": set(),
    "snapshots": set(),
    "files": set(),
    "home": set(),
}


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The torpor modules `name` imports (anywhere in it, functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("torpor"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("torpor"):
                for a in node.names:  # `from pkg import module` names a module
                    found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "torpor"


def test_packages_import_only_the_layers_below_them():
    bad = []
    for mod, deps in graph().items():
        here = layer(mod)
        if here == "torpor":  # the package's face: lazy re-exports of the public names
            continue
        for dep in deps:
            there = layer(dep)
            if there != here and there not in MAY_IMPORT[here] | LEAVES:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_between_modules():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "modules that import each other: " + "; ".join(
        " <-> ".join(c) for c in cycles)  # fmt: skip


def test_the_graph_sees_real_imports():
    # a check that reads nothing would pass: the runtime does import the sandbox engine
    g = graph()
    assert "torpor.sandbox.engine" in g["torpor.runtime.core"]
    assert len(g) > 60


def test_the_package_face_exports_real_names():
    """Every name `torpor.__all__` promises imports, and a type checker sees each one
    (the TYPE_CHECKING imports of torpor/__init__.py name them all)."""
    import torpor

    face = (SRC / "torpor" / "__init__.py").read_text()
    for name in torpor.__all__:
        assert getattr(torpor, name) is not None
        assert name == "__version__" or f" {name}" in face.split("_LAZY")[0], name
