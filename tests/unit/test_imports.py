"""The layout holds: ipspool's modules import each other without a cycle, and the daemon never imports its tools.

The graph is read from the source with ``ast``: module-level imports and the
imports inside functions (a lazy import closes a cycle as surely as one at the
top, only later), leaving out only ``if TYPE_CHECKING:`` blocks, which never
run. Imports by string (``importlib.import_module``, stage names in the
configuration) are not statements and are not in the graph.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

from tests.support.daemon import REPO

Graph = dict[str, dict[str, int]]  # module -> {module it imports: line of the first such import}


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of ``package`` under ``root``, by dotted name, with its file and whether it is a package."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """The modules of ``known`` that one module imports, wherever the statement is."""

    def __init__(self, name: str, is_package: bool, known: set[str]) -> None:
        self.package = name if is_package else name.rpartition(".")[0]
        self.name = name
        self.known = known
        self.found: dict[str, int] = {}

    def _add(self, target: str, line: int) -> None:
        if target in self.known and target != self.name:
            self.found.setdefault(target, line)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parent = ".".join(parts[: len(parts) - (node.level - 1)])
            base = f"{parent}.{base}" if base else parent
        for alias in node.names:
            # "from a import b" imports the module a.b if there is one, else a name from a.
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.known else base, node.lineno)


def import_graph(root: Path, package: str) -> Graph:
    """Who imports whom among the modules of ``package`` (a folder under ``root``)."""
    modules = _modules(root, package)
    graph: Graph = {}
    for name, (path, is_package) in modules.items():
        visitor = _Imports(name, is_package, set(modules))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = visitor.found
    return graph


def find_cycle(graph: Graph) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] if there is none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str]:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, {})):
            if target in on_path:
                return [*path[path.index(target):], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return []

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def describe(cycle: list[str], graph: Graph, root: Path) -> str:
    """Each step of ``cycle`` as the file and line of its import statement."""
    steps = []
    for here, there in pairwise(cycle):
        line = graph[here][there]
        path = root.joinpath(*here.split("."))
        shown = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        source = shown.read_text().splitlines()[line - 1].strip()
        steps.append(f"  {here} -> {there}  ({shown.relative_to(root)}:{line}: {source})")
    return "\n".join(steps)


def reachable(graph: Graph, starts: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, {}))
    return seen


def test_the_graph_has_function_level_and_relative_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    """A lazy import is an edge, ``from . import`` resolves, an ``if TYPE_CHECKING:`` import is no edge."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from ..top import value\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "if TYPE_CHECKING:\n    from pkg.lazy import helper\nelse:\n    import pkg.sub\n"
        "value = 1\n")
    (pkg / "lazy.py").write_text("def helper():\n    from pkg import top\n    return top.value\n")
    assert import_graph(tmp_path, "pkg") == {
        "pkg": {},
        "pkg.lazy": {"pkg.top": 2},
        "pkg.sub": {"pkg.sub.leaf": 1},
        "pkg.sub.leaf": {"pkg.top": 1},
        "pkg.top": {"pkg.sub": 6},
    }
    graph = import_graph(tmp_path, "pkg")
    cycle = find_cycle(graph)
    assert cycle == ["pkg.top", "pkg.sub", "pkg.sub.leaf", "pkg.top"]
    assert "pkg/top.py:6: import pkg.sub" in describe(cycle, graph, tmp_path)


def test_ipspool_modules_import_each_other_without_a_cycle() -> None:
    """No chain of imports, at module level or inside functions, leads from an ipspool module back to itself."""
    root = REPO / "daemon"
    graph = import_graph(root, "ipspool")
    assert len(graph) > 30 and graph["ipspool.cli"], "the graph is empty: were the modules found?"
    cycle = find_cycle(graph)
    assert not cycle, "import cycle:\n" + describe(cycle, graph, root)


def test_the_daemon_never_imports_the_build_tools() -> None:
    """Nothing outside ipspool.tools imports ipspool.tools, directly or through another module."""
    graph = import_graph(REPO / "daemon", "ipspool")
    runtime = [m for m in graph if m != "ipspool.tools" and not m.startswith("ipspool.tools.")]
    leaks = {m for m in reachable(graph, runtime) if m == "ipspool.tools" or m.startswith("ipspool.tools.")}
    assert not leaks, f"the daemon imports {sorted(leaks)}: build-time tools belong under ipspool.tools only"
