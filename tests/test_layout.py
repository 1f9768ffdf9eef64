"""The package's layout: no import circle anywhere in nudiff, no module past ~500 lines, and one
room per segmenter (nothing generic names a specific network; the networks do not name each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nudiff

PACKAGE = Path(nudiff.__file__).parent
MAX_LINES = 500
SEGMENTATION = "nudiff.segmentation"
NETWORKS = (f"{SEGMENTATION}.hovernet", f"{SEGMENTATION}.pffnet")
# the only generic modules that may name a network: the table from model names to their functions
MAY_NAME_NETWORKS = {f"{SEGMENTATION}.registry"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of the file (an import inside a
    function still makes a circle, only a later one)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, up level - 1
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from a import b" names module a.b when b is a module, else a
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known)
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = package_modules(root)
    known = set(modules)
    graph = {name: imports_of(path, name, known) for name, path in modules.items()}
    # importing a module first imports its packages: a.b.c depends on a.b and a
    for name in graph:
        parts = name.split(".")
        graph[name] |= {".".join(parts[:i]) for i in range(1, len(parts))} - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_package_of(module: str, parent: str) -> bool:
    """A package importing its own parents is not a circle of the code: parents are excluded."""
    return parent.startswith(module + ".")


def test_no_import_circle_in_nudiff():
    graph = import_graph()
    # a package's __init__ may import its own modules; those modules import the package first,
    # which Python handles (the package is already in sys.modules). Only code edges count.
    code_graph = {
        m: {d for d in deps if not is_package_of(d, m) and not is_package_of(m, d)} for m, deps in graph.items()
    }
    assert f"{SEGMENTATION}.fit" in code_graph  # the check saw the package
    assert circles(code_graph) == []


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check can fail: two modules importing each other, one of them from inside a function."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.b import g\n")
    (root / "b.py").write_text("def g():\n    from pkg import a\n")
    (root / "c.py").write_text("import pkg.a\n")
    assert circles(import_graph(root)) != []
    found = circles({m: {d for d in deps if m != "pkg" and d != "pkg"} for m, deps in import_graph(root).items()})
    assert found == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_no_module_is_longer_than_the_limit(name):
    lines = package_modules()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines (limit {MAX_LINES}): split it by job"


def test_nothing_generic_in_segmentation_names_a_network():
    graph = import_graph()
    offending = {}
    for name, deps in graph.items():
        if not name.startswith(SEGMENTATION + ".") or name in MAY_NAME_NETWORKS:
            continue
        own = next((n for n in NETWORKS if name == n or name.startswith(n + ".")), None)
        named = sorted(d for d in deps for n in NETWORKS if n != own and (d == n or d.startswith(n + ".")))
        if named:
            offending[name] = named
    assert offending == {}
    # the registry has every network
    assert all(any(d.startswith(n) for d in graph[f"{SEGMENTATION}.registry"]) for n in NETWORKS)
