"""The package's structure: no import cycle, no private names across modules, no global backend.

An AST walk over ``src/freetumor`` (every import statement, at module top or deferred inside a
function) builds the module import graph; any strongly connected component of more than one
module, or a module importing itself, is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "freetumor"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(module imported, name imported from it or None, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if _is_package(name, mods) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "freetumor":
                    out.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "freetumor":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:  # `from . import db`: the submodule itself
                    out.append((sub, None, node.lineno))
                else:
                    out.append((target, alias.name, node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _what, _line in imports_of(name, path, mods):
            if target in mods:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_relative_and_deferred_imports():
    graph = import_graph()
    assert "freetumor.errors" in graph["freetumor.io"]
    assert "freetumor.turing.db" in graph["freetumor.turing.score"]  # `from . import db`
    assert len(graph) > 30


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_name_imported_across_modules():
    mods = modules()
    bad = []
    for name, path in mods.items():
        for target, what, line in imports_of(name, path, mods):
            if what and what.startswith("_") and not what.startswith("__") and target != name:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {what} from {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_process_global_matplotlib_backend(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use":
            base = node.func.value
            assert not (isinstance(base, ast.Name) and base.id == "matplotlib"), \
                f"{path.name}:{node.lineno} sets the matplotlib backend for the whole process"


def test_deferred_imports_say_why():
    """Imports sit at module top; one inside a function (a deliberately deferred heavy or optional
    dependency) carries a ``# deferred`` comment on its line or the line above."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                here = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
                end = lines[(node.end_lineno or node.lineno) - 1]
                if "deferred" not in here + end and "TYPE_CHECKING" not in here:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, f"{len(bad)} imports inside functions without a '# deferred' reason:\n" + "\n".join(bad)


def test_architecture_page_names_every_module():
    """docs/architecture.md stays current: every module (packages aside) is named there, as its
    dotted name below ``freetumor`` or under a ``parent.*`` wildcard."""
    import re

    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    mods = modules()
    missing = []
    for name in mods:
        if _is_package(name, mods):
            continue
        rel = name.split(".", 1)[1]
        parts = rel.split(".")
        options = [rel] + [".".join(parts[:k]) + ".*" for k in range(1, len(parts))]
        if not any(re.search(r"(?<![\w.])" + re.escape(o) + r"(?![\w])", text) for o in options):
            missing.append(rel)
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
