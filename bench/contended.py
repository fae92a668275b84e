"""``contended``: C tasks, a pool of C/4, acquire + one yield + release."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from bench import base
from bench.acquire import IMPLS, RUNNERS, pairs_table
from bench.base import Cell, CellSpec, Impls, Metrics, Summary, Target, Workload
from bench.peers import REQUIRES as PEERS

TARGET = 3.0  # µs per pair over the bare yield


class Contended(Workload):
    name = "contended"
    title = "Contended acquire + yield + release, C tasks, limit C/4"
    impls: ClassVar[Impls] = IMPLS
    requires = PEERS
    seconds = (0.4, 0.1)
    phases = 2  # the bare yield, then the pairs

    def levels(self, opts: base.Options) -> tuple[int, ...]:
        return tuple(c for c in opts.conc if c >= 4)  # C/4 of less is no pool

    def run(self, spec: CellSpec) -> Metrics:
        return RUNNERS[spec.cell.impl](spec, True)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        return base.sections(
            (
                "µs per pair minus µs per bare yield, by wall-clock time, median [min-max]",
                pairs_table(summary, cells, "us_over_yield", "us_per_yield"),
            ),
            (
                "The same by CPU time",
                pairs_table(summary, cells, "cpu_us_over_yield", "cpu_us_per_yield"),
            ),
            (
                "Absolute µs per pair by wall-clock time (before subtracting the yield)",
                pairs_table(summary, cells, "us_per_pair"),
            ),
        )

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"contended µs/pair over yield, {c.impl}, {c.loop}, C={c.conc}",
                "<=",
                TARGET if c.impl == "conpool" else None,  # fifo, the floor, for reference
                summary.cell(c, "us_over_yield"),
                summary.cell(c, "cpu_us_over_yield"),
            )
            for c in sorted(cells, key=lambda c: (c.conc, base.loop_order(c.loop), c.impl))
            if c.impl in ("conpool", "fifo")
        ]
