"""The `agent` package has no import circles.

Every module is parsed (not imported) and every `import agent.x` / `from agent.x import y` /
`from . import y` counts, wherever it is written: at the top, inside a function (a lazy import is
still a dependency, only a hidden one) and under `if TYPE_CHECKING:`. Type-only imports count too:
a circle that exists only for the type checker still ties two modules together, and it becomes a
real circle the day someone needs the name at run time.

One exception, on purpose: a TYPE_CHECKING import *of* the composition root (`ROOTS`: agent.app,
which builds every stage, and agent.services, which types them) is not an edge. Every stage names
`Agent`/`Running` in its `build(agent, running)` signature and the root names every stage's class,
while at run time the root reaches the stages only by module name (importlib). Any run-time import
of a root from a stage still counts.

A module depends on a submodule it imports (`from agent.detect import card` → `agent.detect.card`)
and on every package above it, since Python runs those `__init__`s first (`agent.detect.card` →
`agent.detect` too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "agent"
ROOTS = frozenset({"agent.app", "agent.services"})


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (packages by their __init__)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if not level:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_only: bool = False) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in the tree, and whether it sits under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_only
        elif _type_checking_block(child):
            assert isinstance(child, ast.If)
            for part in child.body:
                yield from _imports(ast.Module(body=[part], type_ignores=[]), True)
            for part in child.orelse:
                yield from _imports(ast.Module(body=[part], type_ignores=[]), type_only)
        else:
            yield from _imports(child, type_only)


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its text."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str, type_only: bool) -> None:
        # the deepest known module the dotted name refers to (agent.detect.card.Card → agent.detect.card)
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if not parts or (type_only and ".".join(parts) in ROOTS):
            return
        for depth in range(len(parts), 1, -1):  # the packages above it run first
            found.add(".".join(parts[:depth]))

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node, type_only in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name, type_only)
        else:
            base = _absolute(node.module, node.level, name, is_package)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, type_only)
    # its own packages (run before it) are not dependencies it chose
    return {m for m in found if m != name and not name.startswith(m + ".")}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    names = module_names(root, package)
    return {name: imports_of(name, path, names) for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def circle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """One concrete path a → … → a inside a strongly connected group (a readable example)."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return group


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.sub.b import X\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    import agent.c\n")
    (pkg / "c.py").write_text("from .sub import b\nfrom agent import a\n")
    (pkg / "app.py").write_text("from typing import TYPE_CHECKING\nimport agent.c\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.app import X\n")
    (pkg / "e.py").write_text("def f():\n    from agent.app import X\n")
    graph = import_graph(tmp_path)
    assert graph["agent.a"] == {"agent.sub", "agent.sub.b"}
    assert graph["agent.sub.b"] == {"agent.c"}
    assert graph["agent.c"] == {"agent.sub", "agent.sub.b", "agent.a"}
    assert graph["agent.sub"] == {"agent.sub.b"}
    assert graph["agent.d"] == set()  # a type-only import of the composition root
    assert graph["agent.e"] == {"agent.app"}  # but a run-time one counts
    # agent.sub joins the circle: importing agent.sub.b runs agent.sub first, which imports b
    assert cycles(graph) == [["agent.a", "agent.c", "agent.sub", "agent.sub.b"]]
    assert circle(graph, cycles(graph)[0]) == ["agent.a", "agent.sub.b", "agent.c", "agent.a"]



def test_no_import_circles_in_the_agent():
    graph = import_graph()
    found = [f"{', '.join(group)} (e.g. {' → '.join(circle(graph, group))})" for group in cycles(graph)]
    assert not found, "import circles in the agent package:\n" + "\n".join(found)


# -- what stages may know of the agent ----------------------------------------------------------------
BUILDER = "build"  # each optional stage's module-level `build(agent, running)` (agent.app.STAGE_BUILDERS)
ENTRY_POINTS = frozenset({"agent.app", "agent.cli"})  # the composition root and the command that runs it


def agent_mentions(path: Path) -> list[int]:
    """Lines where the module names `Agent` (a name, an attribute or a string annotation) outside a
    module-level `build` function and outside imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == BUILDER:
            allowed |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) or not hasattr(node, "lineno"):
            continue
        named = (
            (isinstance(node, ast.Name) and node.id == "Agent")
            or (isinstance(node, ast.Attribute) and node.attr == "Agent")
            or (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and node.value.replace("'", "").replace('"', "") == "Agent")
        )
        if named and node.lineno not in allowed:
            lines.add(node.lineno)
    return sorted(lines)


def test_the_agent_check_sees_a_stage_that_keeps_the_agent(tmp_path):
    module = tmp_path / "stage.py"
    module.write_text(
        "from agent.app import Agent\n"
        "class S:\n"
        "    def __init__(self, agent: Agent) -> None:\n"
        "        self.agent = agent\n"
        "def helper(agent: 'Agent') -> None: ...\n"
        "def build(agent: Agent, running):\n"
        "    return S(agent)\n"
    )
    assert agent_mentions(module) == [3, 5]


def test_only_the_builders_know_the_agent():
    """Stages get narrow parts of the agent (agent.services.Host/ConfigHost, a config getter, the
    notifier), never the `Agent` itself: only each module's `build()` may name it."""
    found = [
        f"{name}: line {', '.join(map(str, lines))}"
        for name, path in module_names(ROOT, PACKAGE).items()
        if name not in ENTRY_POINTS and (lines := agent_mentions(path))
    ]
    assert not found, "modules that name Agent outside build():\n" + "\n".join(found)
