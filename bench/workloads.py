"""What a workload is, and the registry the runner reads.

A workload names the cells of its matrix (one implementation, on one event
loop, at one concurrency), measures one cell inside a fresh client process
(:meth:`Workload.run`), and says which cells to pair into ratios and how to
print its table.  Adding a workload is writing one subclass and listing it in
:func:`registry`; the runner does the processes, pinning, shuffling, repeats,
pairing and JSON.

This module imports nothing heavy: the runner's process never loads an event
loop library, and each client process loads only what its cell needs.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

__all__ = [
    "Cell",
    "CellSpec",
    "Metrics",
    "Options",
    "Ratio",
    "Stat",
    "Summary",
    "Target",
    "Workload",
    "available",
    "fmt_stat",
    "registry",
]

Metrics = dict[str, float]

# The event loops a cell can run on.  "asyncio" is the stock selector loop.
LOOPS = ("asyncio", "uvloop", "trio")

# What must be importable for a loop or an implementation to be measured.
REQUIRES: Mapping[str, tuple[str, ...]] = {
    "uvloop": ("uvloop",),
    "trio": ("trio",),
    "acp": ("asyncio_connection_pool",),
    "gcp": ("generic_connection_pool",),
    "httpcore": ("httpcore",),
    "aiohttp": ("aiohttp",),
}


def available(name: str) -> bool:
    """Whether the modules a loop or an implementation needs are installed."""
    return all(importlib.util.find_spec(mod) is not None for mod in REQUIRES.get(name, ()))


@dataclass(frozen=True, order=True)
class Cell:
    """One point of the matrix."""

    workload: str
    impl: str
    loop: str
    conc: int

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.impl}/{self.loop}/c{self.conc}"


@dataclass(frozen=True)
class Options:
    """Run-wide settings shared by every cell of a workload."""

    duration: float  # seconds measured per phase
    warmup: float  # seconds run before measuring (connections are dialled here)
    conc: tuple[int, ...]  # concurrency levels (workloads pick what applies)


@dataclass(frozen=True)
class CellSpec:
    """Everything a client process needs to measure one cell."""

    cell: Cell
    host: str
    port: int
    duration: float
    warmup: float
    cpu: int | None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        raw = json.loads(text)
        cell = Cell(**raw.pop("cell"))
        return cls(cell=cell, **raw)


@dataclass(frozen=True)
class Ratio:
    """``num``'s metric over ``den``'s, computed within each repeat."""

    label: str  # e.g. "conpool/raw"
    num: Cell
    den: Cell
    metric: str


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Summary:
    """What the runner hands a workload to print: statistics over repeats."""

    repeats: int
    cells: dict[str, dict[str, Stat]] = field(default_factory=dict)  # key -> metric -> Stat
    ratios: dict[tuple[str, str, str], Stat] = field(default_factory=dict)  # (label, num, den)

    def cell(self, cell: Cell, metric: str) -> Stat | None:
        return self.cells.get(cell.key, {}).get(metric)

    def ratio(self, r: Ratio) -> Stat | None:
        return self.ratios.get((r.label, r.num.key, r.den.key))


@dataclass(frozen=True)
class Target:
    """A goal the project set itself, checked against the medians measured by
    wall-clock time and by the client's CPU time."""

    what: str
    goal: str  # e.g. ">= 0.90", or "" when there is none (shown for reference)
    wall: float | None
    cpu: float | None
    ok_wall: bool | None  # None: no goal, or not measured
    ok_cpu: bool | None

    @classmethod
    def check(
        cls, what: str, op: str, limit: float | None, wall: Stat | None, cpu: Stat | None
    ) -> Target:
        def ok(stat: Stat | None) -> bool | None:
            if stat is None or limit is None:
                return None
            return stat.median >= limit if op == ">=" else stat.median <= limit

        return cls(
            what,
            "" if limit is None else f"{op} {limit:g}",
            None if wall is None else wall.median,
            None if cpu is None else cpu.median,
            ok(wall),
            ok(cpu),
        )


def fmt_stat(stat: Stat | None, fmt: str = "{:.2f}", *, spread: bool = True) -> str:
    """``median [min-max]`` (or ``median`` alone for a single repeat)."""
    if stat is None:
        return "-"
    if not spread or stat.n < 2:
        return fmt.format(stat.median)
    return f"{fmt.format(stat.median)} [{fmt.format(stat.min)}-{fmt.format(stat.max)}]"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned first columns, right-aligned numbers, two spaces apart."""
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cols: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cols):
            out.append(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


class Workload(ABC):
    """A family of cells measured the same way."""

    name: str
    title: str
    # Implementations in column order, each with the loops it runs on.
    impls: ClassVar[Mapping[str, tuple[str, ...]]]

    @abstractmethod
    def timing(self, quick: bool) -> tuple[float, float]:
        """(duration, warmup) in seconds per measured phase."""

    def phases(self) -> int:
        """How many warmup+duration phases one cell runs (for its time limit)."""
        return 1

    def concurrency(self, opts: Options) -> tuple[int, ...]:
        return opts.conc

    def group(self, cell: Cell) -> str:
        """Cells of one group run back to back (in shuffled order), so that
        the cells a ratio pairs are measured close together in time."""
        return f"{cell.workload}/{cell.loop}/c{cell.conc}"

    def cells(self, opts: Options) -> list[Cell]:
        return [
            Cell(self.name, impl, loop, c)
            for c in self.concurrency(opts)
            for impl, loops in self.impls.items()
            for loop in loops
        ]

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        return []

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return []

    @abstractmethod
    def run(self, spec: CellSpec) -> Metrics:
        """Measure one cell (in the client process)."""

    @abstractmethod
    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        """Lines of this workload's part of the printed table."""


def registry() -> dict[str, Workload]:
    """Every workload, in the order the report prints them."""
    from bench.acquire import Contended, Uncontended
    from bench.echo import Echo
    from bench.http import Http
    from bench.scale import Hold, Memory, Scale, Sweep
    from bench.tracing import Tracing

    workloads: list[Workload] = [
        Echo(),
        Uncontended(),
        Contended(),
        Http(),
        Scale(),
        Sweep(),
        Memory(),
        Hold(),
        Tracing(),
    ]
    return {w.name: w for w in workloads}
