"""The package's structure: no import cycle, no private names across modules, no global backend, and
no import of a higher layer than the "Layers" table of docs/architecture.md gives (every module in one row).

An AST walk over ``src/freetumor`` (every import statement, at module top or deferred inside a
function) builds the module import graph; any strongly connected component of more than one
module, or a module importing itself, is a cycle.
"""

from __future__ import annotations

import ast
import re
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


# ----------------------------------------------------------------------------- layers
ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"
_LAYER_ROW = re.compile(r"^\|\s*(\d+)\b[^|]*\|([^|]*)\|")


def layer_rows(text: str) -> list[tuple[int, list[str]]]:
    """(layer, module entries) of each row ``| N name | `a`, `b.*`, ... | what |`` of the page's
    "Layers" table: every backticked name of the second column."""
    if "\n## Layers" not in text:
        return []
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = _LAYER_ROW.match(line)
        if m:
            rows.append((int(m.group(1)), re.findall(r"`([^`]+)`", m.group(2))))
    return rows


def entry_modules(entry: str, mods) -> set[str]:
    """The modules one table entry names (dotted below ``freetumor``): ``pkg.*`` is the package and
    everything under it; ``pkg/__init__`` and a bare ``pkg`` are the package's ``__init__`` alone;
    ``__init__`` is the package ``freetumor`` itself; ``a.b`` is that module."""
    entry = entry.strip()
    if entry == "__init__":
        return {"freetumor"} & set(mods)
    if entry.endswith(".*"):
        base = "freetumor." + entry[:-2]
        return {m for m in mods if m == base or m.startswith(base + ".")}
    name = "freetumor." + entry.removesuffix("/__init__").replace("/", ".")
    return {name} & set(mods)


def layer_map(text: str, mods) -> tuple[dict[str, int], list[str]]:
    """module -> its layer from the table, and the table's problems: an entry that names no module,
    a module in two rows, a module in no row."""
    layer: dict[str, int] = {}
    rows_of: dict[str, set[int]] = {}
    problems = []
    for n, entries in layer_rows(text):
        for entry in entries:
            found = entry_modules(entry, mods)
            if not found:
                problems.append(f"layer {n}: `{entry}` names no module of src/freetumor")
            for m in found:
                rows_of.setdefault(m, set()).add(n)
                layer[m] = n
    for m in sorted(mods):
        if m not in rows_of:
            problems.append(f"{m} is in no layer")
        elif len(rows_of[m]) > 1:
            problems.append(f"{m} is in layers {sorted(rows_of[m])}")
    return layer, problems


def upward_imports(layer: dict[str, int], edges) -> list[str]:
    """Each import (module, imported module, where) whose target, or a package around it (importing
    ``a.b`` runs ``a/__init__``), sits in a higher layer than the importer."""
    bad = []
    for src, target, where in edges:
        parts = target.split(".")
        for k in range(len(parts), 0, -1):
            t = ".".join(parts[:k])
            if t in layer and src in layer and layer[t] > layer[src]:
                bad.append(f"{where}: {src} (layer {layer[src]}) imports {t} (layer {layer[t]})")
    return bad


def import_edges(mods) -> list[tuple[str, str, str]]:
    edges = []
    for name, path in mods.items():
        for target, _what, line in imports_of(name, path, mods):
            if target in mods:
                edges.append((name, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_layer_table_parser():
    mods = {m: PACKAGE / "x.py" for m in ("freetumor", "freetumor.io", "freetumor.data", "freetumor.data.catalog",
                                         "freetumor.ev", "freetumor.ev.a", "freetumor.ev.b.c", "freetumor.cli")}
    mods["freetumor.data"] = PACKAGE / "data" / "__init__.py"
    text = ("# Page\n\n## Layers (a module imports only from its own layer or below)\n\n"
            "| layer | modules | what they hold |\n|---|---|---|\n"
            "| 0 facts | `__init__`, `io` | the version; volumes (`Grid` is not a module entry) |\n"
            "| 1 files | `data` (`data/__init__`, `data.catalog`) | datalists |\n"
            "| 5 runs | `ev.*`, `gone` | evaluation |\n\n## Next\n\n| 7 not | `cli` | other table |\n")
    layer, problems = layer_map(text, mods)
    assert layer == {"freetumor": 0, "freetumor.io": 0, "freetumor.data": 1, "freetumor.data.catalog": 1,
                     "freetumor.ev": 5, "freetumor.ev.a": 5, "freetumor.ev.b.c": 5}
    assert problems == ["layer 5: `gone` names no module of src/freetumor", "freetumor.cli is in no layer"]
    edges = [("freetumor.io", "freetumor.data.catalog", "io.py:3"),   # up, through data/__init__ too
             ("freetumor.ev.a", "freetumor.io", "ev/a.py:1")]        # down: fine
    assert upward_imports(layer, edges) == [
        "io.py:3: freetumor.io (layer 0) imports freetumor.data.catalog (layer 1)",
        "io.py:3: freetumor.io (layer 0) imports freetumor.data (layer 1)"]


def test_every_module_is_in_exactly_one_layer():
    """docs/architecture.md's "Layers" table is the single truth: each module of src/freetumor is in
    one row, and each entry of the table names a module that exists."""
    _layer, problems = layer_map(ARCHITECTURE.read_text(encoding="utf-8"), modules())
    assert not problems, "docs/architecture.md, Layers:\n" + "\n".join(problems)


def test_no_module_imports_a_higher_layer():
    """Every import (at module top, deferred in a function, or for type checking) goes to the
    importer's own layer or below, as the table of docs/architecture.md says."""
    mods = modules()
    layer, _problems = layer_map(ARCHITECTURE.read_text(encoding="utf-8"), mods)
    bad = upward_imports(layer, import_edges(mods))
    assert not bad, f"{len(bad)} imports of a higher layer:\n" + "\n".join(bad)
