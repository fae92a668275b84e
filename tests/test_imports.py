"""The import graph of the package flows one way: no module imports, even
under ``TYPE_CHECKING`` or inside a function, a module that imports it back.

Read from the source with :mod:`ast` (nothing is imported), so an import
added anywhere in ``src/conpool`` that closes a cycle fails here, with the
cycle in the message.
"""

from __future__ import annotations

import ast
from pathlib import Path

import conpool

PACKAGE = Path(conpool.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # A package's own module is its __init__: "." is itself.
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop] if drop else base
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "import conpool._state" is an edge to conpool._state (and, by
            # Python's rules, to conpool, which a test need not repeat).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph[node]):
            if state.get(succ) == 1:
                return [*path[path.index(succ) :], succ]
            if succ not in state:
                cycle = visit(succ)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    # (The parser sees the edges it must: the pool imports the core.)
    assert "conpool._state" in graph["conpool._pool"]
    assert "conpool._backends" in graph["conpool._pool"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_core_imports_no_shell_and_no_event_loop() -> None:
    """The state machine and the pure modules beside it know nothing of the
    shell: not the pool, the backends, the connections, anyio or a clock."""
    pure = ["conpool._state", "conpool._records", "conpool._dialplan", "conpool._balance"]
    graph = import_graph()
    shell = {"conpool._pool", "conpool._connect", "conpool._connection", "conpool._leaks"}
    for name in pure:
        assert not (graph[name] & shell), (name, graph[name] & shell)
        assert not any(m.startswith("conpool._backends") for m in graph[name]), name
        tree = ast.parse(modules()[name].read_text())
        top = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                top |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                top.add(node.module.split(".")[0])
        assert not top & {"anyio", "asyncio", "trio", "sniffio", "time", "socket"}, (name, top)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """(So that the test above can fail.)"""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
