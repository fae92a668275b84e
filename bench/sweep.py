"""``sweep``: the core's idle sweep with 100,000 idle connections, when 0, 10,
1,000 and all of them expire: it should cost what expires, not what is idle.

The records are frozen out of the cyclic GC (``gc.freeze()``), so that a full
collection of the benchmark's own records does not land in a timed sweep.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from bench import base
from bench.base import Cell, CellSpec, Impls, Metrics, Summary, Target, Workload

TARGET = 1.5  # per-expired cost from 10 to 100,000 expired: within this factor
MAX_IDLE = 1e6  # the idle limit of the built state


def _build(size: int) -> Any:
    from bench import _internals

    gc.unfreeze()
    gc.collect()
    gc.disable()
    try:
        state = _internals.build_sweep(size)
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
    return state


def _sweep_cell(spec: CellSpec) -> Metrics:
    from bench._internals import timed_sweep

    n = spec.cell.conc
    out: Metrics = {}
    budget = max(spec.duration, 0.05)

    def record(label: str, wall: float, cpu: float, sweeps: int, expired: int) -> None:
        out[f"us_sweep_{label}"] = wall / sweeps / 1e3
        out[f"cpu_us_sweep_{label}"] = cpu / sweeps / 1e3
        if expired:
            out[f"us_per_expired_{label}"] = wall / expired / 1e3
            out[f"cpu_us_per_expired_{label}"] = cpu / expired / 1e3

    # Nothing expires: with 10 idle, then with n idle (the state the
    # successive sweeps below go on with).
    for label, size in (("0_small", 10), ("0", n)):
        state = _build(size)
        reps = wall = cpu = 0
        end = time.perf_counter() + budget / 2
        while time.perf_counter() < end or reps < 100:
            w, c, k = timed_sweep(state, MAX_IDLE - 0.5)
            if k:
                raise RuntimeError("a sweep expired something too early")
            wall, cpu, reps = wall + w, cpu + c, reps + 1
        record(label, wall, cpu, reps, 0)
    # k expire per sweep, successive sweeps each taking the next k: 200 of
    # 10, then 20 of 1,000, so that 100,000 to 78,000 stay idle meanwhile.
    first = 0
    for k, sweeps in ((10, 200), (1_000, 20)):
        wall = cpu = 0
        for m in range(1, sweeps + 1):
            w, c, got = timed_sweep(state, MAX_IDLE + first + k * m - 0.5)
            if got != k:
                raise RuntimeError(f"sweep {m} expired {got}, expected {k}")
            wall, cpu = wall + w, cpu + c
        first += k * sweeps
        record(str(k), wall, cpu, sweeps, k * sweeps)
    del state
    # Everything expires at once, on a fresh state.
    w, c, got = timed_sweep(_build(n), MAX_IDLE + n)
    if got != n:
        raise RuntimeError(f"the sweep expired {got}, expected {n}")
    record(str(n), w, c, 1, n)
    gc.unfreeze()
    return out


def spread(stats: Sequence[base.Stat | None]) -> base.Stat | None:
    """max / min of the medians."""
    vals = [s.median for s in stats if s is not None]
    return base.Stat.one(max(vals) / min(vals)) if len(vals) >= 2 and min(vals) > 0 else None


class Sweep(Workload):
    name = "sweep"
    title = "Idle sweep of the core with 100,000 idle connections"
    impls: ClassVar[Impls] = {"core": (base.CORE,)}
    seconds = (0.3, 0.0)  # building the 100,000 records (~0.5 s, three times) dominates
    quick_seconds = (0.1, 0.0)
    phases = 10

    def cells(self, opts: base.Options) -> list[Cell]:
        return [Cell(self.name, "core", base.CORE, 100_000)]

    def run(self, spec: CellSpec) -> Metrics:
        return _sweep_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        rows = []
        for cell in cells:
            n = cell.conc
            for idle, k, label in [(n, k, str(k)) for k in (0, 10, 1_000, n)] + [
                (10, 0, "0_small")
            ]:
                rows.append(
                    [
                        f"{idle} idle",
                        str(k),
                        base.fmt_stat(summary.cell(cell, f"cpu_us_sweep_{label}")),
                        base.fmt_stat(summary.cell(cell, f"us_sweep_{label}")),
                        base.fmt_stat(summary.cell(cell, f"cpu_us_per_expired_{label}"))
                        if k
                        else "",
                    ]
                )
        return [
            "µs per sweep(now), the core alone (PoolState.sweep; closing sockets is the shell's)",
            "",
            *base.table(["idle", "expired", "cpu µs", "wall µs", "cpu µs per expired"], rows),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out = []
        for cell in cells:
            n = cell.conc

            def get(metric: str, cell: Cell = cell) -> base.Stat | None:
                return summary.cell(cell, metric)

            def per(prefix: str, n: int = n) -> base.Stat | None:
                return spread([get(f"{prefix}_per_expired_{k}") for k in (10, 1_000, n)])

            def empty(prefix: str) -> base.Stat | None:
                big, small = get(f"{prefix}_sweep_0"), get(f"{prefix}_sweep_0_small")
                if big is None or small is None or small.median <= 0:
                    return None
                return base.Stat.one(big.median / small.median)

            what = f"sweep: per-expired cost, max/min over 10..{n} expired"
            out.append(Target.check(what, "<=", TARGET, per("us"), per("cpu_us")))
            what = f"sweep: nothing expires, {n} idle over 10 idle"
            out.append(Target.check(what, "<=", TARGET, empty("us"), empty("cpu_us")))
        return out
