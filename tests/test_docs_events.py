"""The documentation keeps up with the code: every trace event kind the pool
emits is in the table of docs/observability.md (and the table names no kind
the code no longer emits), and every public name is in the API reference.

The kinds are read from the source (every string constant shaped like an
event kind of one of the pool's scopes), so a new ``emit("x.y")`` fails this
test until it is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import conpool
import conpool.httpx

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "conpool"
DOCS = ROOT / "docs"

SCOPES = (
    "acquire",
    "address",
    "budget",
    "conn",
    "connect",
    "hook",
    "on_connect",
    "pool",
    "proxy",
    "reset",
    "resolve",
    "tls",
)
KIND = re.compile(rf"^(?:{'|'.join(SCOPES)})(?:\.[a-z_]+)+$")
TABLE_ROW = re.compile(r"^\| `([a-z_.]+)` \|", re.MULTILINE)


def kinds_in_source() -> set[str]:
    """Every event kind a module of the library names (the stress suite,
    which only reads events, aside)."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "stress" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if KIND.match(node.value):
                    found.add(node.value)
    return found


def kinds_documented() -> set[str]:
    text = (DOCS / "observability.md").read_text()
    table = text[text.index("### Event kinds") :]
    table = table[: table.index("\n\n", table.index("| kind |"))]
    return set(TABLE_ROW.findall(table))


def test_every_emitted_event_kind_is_documented() -> None:
    emitted = kinds_in_source()
    # The reading is not vacuous: it finds the kinds the API contract names.
    assert {"connect.complete", "budget.gave_up", "resolve.joined"} <= emitted
    assert {"proxy.handshake.failed", "on_connect.failed", "reset.failed"} <= emitted
    documented = kinds_documented()
    assert sorted(emitted - documented) == [], "emitted but not in docs/observability.md"
    assert sorted(documented - emitted) == [], "documented but never emitted"


def reference_text() -> str:
    return "\n".join(p.read_text() for p in sorted((DOCS / "reference").glob("*.md")))


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = reference_text()
    missing = [
        f"{module.__name__}.{name}"
        for module in (conpool, conpool.httpx)
        for name in module.__all__
        if not name.startswith("__") and f"::: {module.__name__}.{name}\n" not in reference
    ]
    assert missing == []
