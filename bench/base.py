"""What a workload is, and the shared types and tables of its report.

A workload names the cells of its matrix (one implementation, on one loop, at
one concurrency), measures one cell inside a fresh client process (``run``),
says which cells to pair into ratios, and prints its tables.  The harness does
the processes, pinning, shuffling, repeats, pairing and JSON.

Nothing here imports an event loop: each client process loads what its cell
needs, inside ``run``.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import ClassVar

Metrics = dict[str, float]
Impls = Mapping[str, tuple[str, ...]]  # implementation -> the loops it runs on

LOOPS = ("asyncio", "uvloop", "trio")
CORE = "core"  # the "loop" of cells that run the state machine alone, no loop

# What must be importable for a loop to be measured (a workload names what
# its implementations need in ``Workload.requires``).
LOOP_REQUIRES: Mapping[str, str] = {"uvloop": "uvloop", "trio": "trio"}


def installed(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


@dataclass(frozen=True, order=True)
class Cell:
    workload: str
    impl: str
    loop: str
    conc: int

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.impl}/{self.loop}/c{self.conc}"

    def but(self, impl: str) -> Cell:
        """The same point of the matrix for another implementation."""
        return Cell(self.workload, impl, self.loop, self.conc)


@dataclass(frozen=True)
class Options:
    duration: float  # seconds measured per phase
    warmup: float  # seconds run before measuring (connections are dialled here)
    conc: tuple[int, ...]
    quick: bool = False


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
        return cls(cell=Cell(**raw.pop("cell")), **raw)


@dataclass(frozen=True)
class Ratio:
    """``num``'s metric over ``den``'s, computed within each repeat."""

    label: str
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

    @classmethod
    def one(cls, value: float) -> Stat:
        """A value computed from medians: no range."""
        return cls(value, value, value, 1)


@dataclass
class Summary:
    """Statistics over the repeats, handed to a workload's report."""

    repeats: int
    cells: dict[str, dict[str, Stat]] = field(default_factory=dict)  # key -> metric -> Stat
    ratios: dict[tuple[str, str, str], Stat] = field(default_factory=dict)  # (label, num, den)

    def cell(self, cell: Cell, metric: str) -> Stat | None:
        return self.cells.get(cell.key, {}).get(metric)

    def ratio(self, r: Ratio) -> Stat | None:
        return self.ratios.get((r.label, r.num.key, r.den.key))


@dataclass(frozen=True)
class Target:
    """A goal, checked against the medians by wall-clock and by CPU time."""

    what: str
    goal: str  # e.g. ">= 0.9", or "" when shown for reference only
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

        wall_v = None if wall is None else wall.median
        cpu_v = None if cpu is None else cpu.median
        goal = "" if limit is None else f"{op} {limit:g}"
        return cls(what, goal, wall_v, cpu_v, ok(wall), ok(cpu))


# -- formatting ---------------------------------------------------------------------


def fmt_num(x: float) -> str:
    """Three significant digits, no exponent in the usual ranges."""
    a = abs(x)
    if a >= 100 or x == 0:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}" if a >= 0.001 else f"{x:.2e}"


def fmt_ratio(x: float) -> str:
    """Two decimals, or two significant digits under 0.1 (0.0031)."""
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"


def fmt_stat(stat: Stat | None, fmt: Callable[[float], str] = fmt_num, scale: float = 1.0) -> str:
    """``median [min-max]`` (the median alone for one repeat)."""
    if stat is None:
        return "-"
    med = fmt(stat.median * scale)
    if stat.n < 2:
        return med
    return f"{med} [{fmt(stat.min * scale)}-{fmt(stat.max * scale)}]"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Two left-aligned first columns, right-aligned numbers, two spaces apart."""
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cols: Sequence[str]) -> str:
        cells = (
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def sections(*parts: tuple[str, list[str]]) -> list[str]:
    """Titled tables, a blank line after each title and between them."""
    out: list[str] = []
    for title, lines in parts:
        out += [*([""] if out else []), title, "", *lines]
    return out


def loop_order(loop: str) -> int:
    return LOOPS.index(loop) if loop in LOOPS else -1


def grid(cells: Iterable[Cell]) -> list[tuple[str, int]]:
    """The (loop, C) rows of a matrix, in loop order."""
    return sorted({(c.loop, c.conc) for c in cells}, key=lambda lc: (loop_order(lc[0]), lc[1]))


def grid_table(
    cells: Sequence[Cell],
    columns: Sequence[str],
    value: Callable[[Cell], str],
    header: Sequence[str] | None = None,
) -> list[str]:
    """Loops and C down, ``columns`` (implementations) across; a column's
    cell that is not in the matrix is left blank."""
    present = set(cells)
    workload = cells[0].workload
    rows = []
    for loop, conc in grid(cells):
        row = [loop, str(conc)]
        for impl in columns:
            cell = Cell(workload, impl, loop, conc)
            row.append(value(cell) if cell in present else "")
        rows.append(row)
    return table(["loop", "C", *(header or columns)], rows)


# -- the workload -------------------------------------------------------------------


class Workload(ABC):
    """A family of cells measured the same way."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Implementations in column order, each with the loops it runs on.
    impls: ClassVar[Impls]
    seconds: ClassVar[tuple[float, float]] = (0.5, 0.15)  # (duration, warmup) of a phase
    quick_seconds: ClassVar[tuple[float, float]] = (0.1, 0.05)  # the same with --quick
    phases: ClassVar[int] = 1  # warmup + duration phases per cell (for its time limit)
    # implementation -> the module it needs (an optional peer); cells of what
    # is not installed are left out, and the report says so.
    requires: ClassVar[Mapping[str, str]] = {}

    def missing(self, cell: Cell) -> list[str]:
        """What ``cell`` needs that is not installed."""
        needs = {cell.loop: LOOP_REQUIRES.get(cell.loop), cell.impl: self.requires.get(cell.impl)}
        return [name for name, module in needs.items() if not installed(module)]

    def levels(self, opts: Options) -> tuple[int, ...]:
        """The concurrency levels this workload runs at."""
        return opts.conc

    def cells(self, opts: Options) -> list[Cell]:
        return [
            Cell(self.name, impl, loop, c)
            for c in self.levels(opts)
            for impl, loops in self.impls.items()
            for loop in loops
        ]

    def group(self, cell: Cell) -> str:
        """Cells of one group run back to back (in shuffled order), so that
        the cells a ratio pairs are measured close together in time."""
        return f"{cell.workload}/{cell.loop}/c{cell.conc}"

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        return []

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return []

    def columns(self, cells: Sequence[Cell]) -> list[str]:
        """The implementations present, in column order."""
        return [i for i in self.impls if any(c.impl == i for c in cells)]

    @abstractmethod
    def run(self, spec: CellSpec) -> Metrics:
        """Measure one cell (in the client process)."""

    @abstractmethod
    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        """Lines of this workload's part of the printed table."""


class VersusRaw(Workload):
    """Pools and clients against ``raw`` (one persistent connection per task)
    on the same loop and C: throughput, client CPU per request, and both as
    ratios to raw paired within each repeat (echo, http)."""

    pools: ClassVar[tuple[str, ...]]

    def pair(self, cell: Cell) -> tuple[Ratio, Ratio]:
        """X/raw by throughput, and by CPU per request (raw's over X's, so
        that both read "1.00 = as good as raw")."""
        raw = cell.but("raw")
        return (
            Ratio(f"{cell.impl}/raw", cell, raw, "rps"),
            Ratio(f"{cell.impl}/raw cpu", raw, cell, "cpu_us"),
        )

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        present = set(cells)
        return [
            r
            for c in cells
            if c.impl in self.pools and c.but("raw") in present
            for r in self.pair(c)
        ]

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        impls = self.columns(cells)
        pools = [i for i in self.pools if i in impls]

        def values(metric: str, scale: float) -> list[str]:
            return grid_table(
                cells, impls, lambda c: fmt_stat(summary.cell(c, metric), scale=scale)
            )

        def ratios(which: int) -> list[str]:
            return grid_table(
                cells,
                pools,
                lambda c: fmt_stat(summary.ratio(self.pair(c)[which]), fmt_ratio),
                [f"{i}/raw" for i in pools],
            )

        return sections(
            (
                "Throughput, thousands of requests/s, median [min-max] over the repeats",
                values("rps", 1e-3),
            ),
            (
                "Throughput ratio to raw on the same loop and C (paired within each repeat)",
                ratios(0),
            ),
            ("Client CPU µs per request", values("cpu_us", 1.0)),
            ("CPU ratio: raw's CPU per request / X's (1.00 = as cheap as raw; paired)", ratios(1)),
        )
