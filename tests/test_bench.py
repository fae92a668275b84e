"""bench/ is a tool of its own: its imports flow one way, and one tiny
workload runs end to end through the real command line.

The smoke run asserts the structure of the JSON, never a speed: the machine
that runs the suite may be loaded by anything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def bench_imports() -> dict[str, set[str]]:
    """Module -> the bench modules it imports, anywhere in the file (inside
    functions and ``if TYPE_CHECKING:`` blocks too)."""
    modules = {p.stem for p in BENCH.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(BENCH.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # A relative import (from . import x) is inside the package.
                base = ".".join(filter(None, ["bench" if node.level else "", node.module]))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "bench" and len(parts) > 1 and parts[1] in modules:
                    deps.add(parts[1])
        deps.discard(path.stem)
        graph[path.stem] = deps
    return graph


def test_bench_imports_have_no_cycle() -> None:
    graph = bench_imports()
    # What the graph must hold for the check to mean anything.
    assert "harness" in graph["__main__"]
    assert "harness" not in graph["cell"]  # a client loads the workloads alone
    assert {"echo", "acquire", "contended"} <= graph["registry"]
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"bench/ has an import cycle: {' -> '.join(exc.args[1])}")
    assert order.index("base") < order.index("registry") < order.index("harness")


def test_bench_private_names_in_one_module() -> None:
    """conpool's private modules are used by bench/_internals.py alone, so
    that a refactor of the library has one place to fix in bench."""
    users = set()
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n.startswith("conpool._") for n in names):
                users.add(path.name)
    assert users == {"_internals.py"}


@pytest.mark.timeout(300)
def test_bench_smoke_run(tmp_path: Path) -> None:
    """Two cells of echo (raw and conpool, asyncio, C = 1), each in its own
    pinned process against the harness's echo server: the tables print and
    the JSON says what ran, with a paired ratio."""
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "bench", "--workload", "echo", "--impl", "raw"]
    cmd += ["--impl", "conpool", "--loop", "asyncio", "--conc", "1", "--repeat", "1"]
    cmd += ["--duration", "0.2", "--warmup", "0.05", "--budget", "240", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "== Echo round trips" in done.stdout
    assert "conpool/raw" in done.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"meta", "runs", "cells", "ratios", "targets"}
    assert result["meta"]["repeat"] == 1
    assert result["meta"]["command"].startswith("python -m bench --workload echo")
    assert result["meta"]["source"]["commit"]
    keys = {"echo/raw/asyncio/c1", "echo/conpool/asyncio/c1"}
    assert {r["key"] for r in result["runs"]} == keys
    for run in result["runs"]:
        assert "error" not in run, run
        assert run["metrics"]["requests"] > 0
        assert run["metrics"]["rps"] > 0
    assert set(result["cells"]) == keys
    labels = {(r["label"], r["num"], r["den"]) for r in result["ratios"]}
    assert ("conpool/raw", "echo/conpool/asyncio/c1", "echo/raw/asyncio/c1") in labels
    (target,) = result["targets"]
    assert target["what"] == "echo conpool/raw, asyncio, C=1"
    assert target["wall"] > 0 and target["cpu"] > 0


def test_bench_list_names_every_workload() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    workloads = {line.split("/", 1)[0] for line in done.stdout.splitlines() if "/" in line}
    expected = {"echo", "acquire", "contended", "http", "scale", "sweep", "memory", "hold"}
    assert expected | {"tracing"} <= workloads
