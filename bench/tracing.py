"""What tracing costs: ``Pool(tracer=None)`` against ``Pool(tracer=Tracer(65536))``.

* ``echo-off`` / ``echo-on``: the echo workload's ``conpool`` column (C
  tasks, 64-byte round trips, ``async with pool.connection(ep)`` per request,
  ``max_connections_per_endpoint = C``) without and with a tracer, at C = 16
  and 64 on asyncio and uvloop.  Paired ratio on/off: throughput, and CPU per
  request (off's over on's), 1.00 = free.
* ``pair-off`` / ``pair-on``: the uncontended ``acquire`` + ``release`` of
  one idle connection (the ``acquire`` workload's loop), µs per pair.

With no tracer each trace point is meant to cost one attribute check
(``if self._trace is not None``).  A build without trace points to compare
against does not exist, so the off cells measure the pieces instead:

* ``guard_ns``: one such check on a live ``Pool``, timed in a loop (minus the
  empty loop);
* ``events_per_op`` (on cells): trace points hit per request or pair, from
  the tracer's own count;
* ``traced_calls_per_op`` (off cells): calls into the tracing code
  (``Hooks``, ``Tracer``, ``Pool._emit``) per pair with no tracer, counted
  with ``sys.setprofile`` over 2,000 pairs after the timing: 0 means every
  trace point on that path is the attribute check alone.

The report turns them into the no-tracer overhead: trace points per request
x ``guard_ns`` / the request's CPU time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from bench.common import fmt_num, fmt_ratio, phase_metrics, stat_fmt
from bench.loops import Meter, drive_anyio, run_anyio, time_batches
from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Metrics,
    Options,
    Ratio,
    Stat,
    Summary,
    Target,
    Workload,
    table,
)

__all__ = ["Tracing"]

SIZE = 64
MESSAGE = bytes(range(SIZE))
CAPACITY = 65536
ON_TARGET = 0.90  # tracer attached: at most 10 % of pooled echo throughput lost
OFF_TARGET = 1.0  # no tracer: at most ~1 % (percent of a request's CPU)


def guard_ns(obj: Any, n: int = 50_000) -> float:
    """Nanoseconds of one ``obj._trace is not None`` check: ten checks per
    turn of a loop, minus the empty loop, CPU time, median of 7."""
    clock = time.process_time_ns
    diffs = []
    for _ in range(7):
        t0 = clock()
        for _ in range(n):
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
            if obj._trace is not None:
                pass
        t1 = clock()
        for _ in range(n):
            pass
        t2 = clock()
        diffs.append(((t1 - t0) - (t2 - t1)) / (10 * n))
    diffs.sort()
    return max(diffs[len(diffs) // 2], 0.0)


def count_traced_calls(run: Any) -> int:
    """Calls into the tracing code while ``run()`` runs (a sync callable)."""
    import conpool._hooks
    import conpool._trace

    files = {conpool._hooks.__file__, conpool._trace.__file__}
    calls = 0

    def profile(frame: Any, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            code = frame.f_code
            if code.co_filename in files or code.co_name == "_emit":
                calls += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def _echo(spec: CellSpec, traced: bool) -> Metrics:
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)
    tracer = conpool.Tracer(capacity=CAPACITY) if traced else None
    total = [0]

    async def main() -> Metrics:
        async with conpool.Pool(config, tracer=tracer) as pool:

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    async with pool.connection(endpoint) as conn:
                        await conn.send(MESSAGE)
                        got = len(await conn.receive())
                        while got < SIZE:
                            got += len(await conn.receive())
                    meter.n += 1
                    total[0] += 1

            sample = await drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
            metrics = phase_metrics(sample)
            if tracer is not None:
                metrics["events_per_op"] = tracer._next / total[0]
            else:
                metrics["guard_ns"] = guard_ns(pool)
        return metrics

    return run_anyio(spec.cell.loop, main)


def _pairs(spec: CellSpec, traced: bool) -> Metrics:
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=1)
    tracer = conpool.Tracer(capacity=CAPACITY) if traced else None
    total = [0]

    async def main() -> Metrics:
        async with conpool.Pool(config, tracer=tracer) as pool:

            async def batch(n: int) -> None:
                for _ in range(n):
                    conn = await pool.acquire(endpoint)
                    await pool.release(conn)
                total[0] += n

            await batch(1)  # dial outside the timing
            sample = await time_batches(batch, spec.warmup, spec.duration)
            wall, cpu = sample.per_op_us()
            metrics = {"us_per_pair": wall, "cpu_us_per_pair": cpu, "pairs": float(sample.n)}
            if tracer is not None:
                metrics["events_per_op"] = tracer._next / total[0]
            else:
                metrics["guard_ns"] = guard_ns(pool)
                # The same loop, driven by hand (acquire and release of an
                # idle connection never suspend), under a profile hook.
                n = 2000

                def drive() -> None:
                    for _ in range(n):
                        coro = pool.acquire(endpoint)
                        try:
                            coro.send(None)
                        except StopIteration as done:
                            conn = done.value
                        else:
                            raise RuntimeError("acquire suspended")
                        coro2 = pool.release(conn)
                        try:
                            coro2.send(None)
                        except StopIteration:
                            pass

                metrics["traced_calls_per_op"] = count_traced_calls(drive) / n
        return metrics

    return run_anyio(spec.cell.loop, main)


class Tracing(Workload):
    name = "tracing"
    title = "Tracing cost: Pool(tracer=None) vs Pool(tracer=Tracer(65536))"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "echo-off": ("asyncio", "uvloop"),
        "echo-on": ("asyncio", "uvloop"),
        "pair-off": ("asyncio", "uvloop"),
        "pair-on": ("asyncio", "uvloop"),
    }

    quick = False

    def timing(self, quick: bool) -> tuple[float, float]:
        # The runner asks for the timing before the cells: remember --quick.
        self.quick = quick
        return (0.15, 0.05) if quick else (0.5, 0.15)

    def cells(self, opts: Options) -> list[Cell]:
        echo = tuple(c for c in opts.conc if c >= 2) or opts.conc
        if self.quick and opts.conc == (1, 16, 64):
            echo = (64,)  # --quick with the default levels: the largest only
        return [
            Cell(self.name, impl, loop, c)
            for impl, loops in self.impls.items()
            for loop in loops
            for c in (echo if impl.startswith("echo") else (1,))
        ]

    def run(self, spec: CellSpec) -> Metrics:
        kind, state = spec.cell.impl.split("-")
        return (_echo if kind == "echo" else _pairs)(spec, state == "on")

    @staticmethod
    def _other(cell: Cell, state: str) -> Cell:
        kind = cell.impl.split("-")[0]
        return Cell(cell.workload, f"{kind}-{state}", cell.loop, cell.conc)

    def _pairs_of(self, on: Cell) -> tuple[Ratio, ...]:
        off = self._other(on, "off")
        if on.impl == "echo-on":
            return (
                Ratio("on/off", on, off, "rps"),
                Ratio("on/off cpu", off, on, "cpu_us"),
            )
        return (
            Ratio("on/off", off, on, "us_per_pair"),
            Ratio("on/off cpu", off, on, "cpu_us_per_pair"),
        )

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        present = set(cells)
        out: list[Ratio] = []
        for cell in cells:
            if cell.impl.endswith("-on") and self._other(cell, "off") in present:
                out += self._pairs_of(cell)
        return out

    def _grid(self, cells: Sequence[Cell], kind: str) -> list[tuple[str, int]]:
        return sorted(
            {(c.loop, c.conc) for c in cells if c.impl.startswith(kind)},
            key=lambda lc: (LOOPS.index(lc[0]), lc[1]),
        )

    def _overhead(self, summary: Summary, off: Cell, on: Cell, cpu_metric: str) -> Stat | None:
        """No-tracer cost, % of the operation's CPU: events/op x guard / CPU."""
        guard = summary.cell(off, "guard_ns")
        events = summary.cell(on, "events_per_op")
        cpu = summary.cell(off, cpu_metric)
        if guard is None or events is None or cpu is None:
            return None
        pct = events.median * guard.median / (cpu.median * 1000) * 100
        return Stat(pct, pct, pct, 1)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        present = set(cells)
        lines: list[str] = []
        for kind, what, rmetric, cmetric in (
            ("echo", "Pooled echo, 64 B", "rps", "cpu_us"),
            ("pair", "Uncontended acquire + release", "us_per_pair", "cpu_us_per_pair"),
        ):
            grid = self._grid(cells, kind)
            if not grid:
                continue
            rows = []
            for loop, conc in grid:
                off = Cell(self.name, f"{kind}-off", loop, conc)
                on = Cell(self.name, f"{kind}-on", loop, conc)
                scale = 1e-3 if kind == "echo" else 1.0
                row = [loop, str(conc)]
                for cell in (off, on):
                    row.append(stat_fmt(summary.cell(cell, rmetric), fmt_num, scale))
                    row.append(stat_fmt(summary.cell(cell, cmetric), fmt_num))
                if on in present and off in present:
                    rate, cpu = self._pairs_of(on)
                    row += [
                        stat_fmt(summary.ratio(rate), fmt_ratio),
                        stat_fmt(summary.ratio(cpu), fmt_ratio),
                    ]
                else:
                    row += ["-", "-"]
                row.append(stat_fmt(summary.cell(on, "events_per_op"), fmt_num))
                row.append(stat_fmt(summary.cell(off, "guard_ns"), fmt_num))
                pct = self._overhead(summary, off, on, cmetric)
                row.append("-" if pct is None else f"{pct.median:.2f} %")
                rows.append(row)
            unit = "k req/s" if kind == "echo" else "µs/pair"
            header = [
                "loop",
                "C",
                f"off {unit}",
                "off cpu µs",
                f"on {unit}",
                "on cpu µs",
                "on/off",
                "on/off cpu",
                "events/op",
                "guard ns",
                "no-tracer cost",
            ]
            lines += [f"{what}: off = tracer=None, on = Tracer(capacity={CAPACITY})", ""]
            lines += [*table(header, rows), ""]
        calls = [
            s
            for c in cells
            if c.impl == "pair-off" and (s := summary.cell(c, "traced_calls_per_op")) is not None
        ]
        if calls:
            worst = max(s.max for s in calls)
            lines.append(
                f"Calls into the tracing code per acquire + release with tracer=None: {worst:g} "
                "(0: each trace point on that path is the attribute check alone)"
            )
        lines += [
            "on/off: throughput (pairs: off's µs over on's), and CPU per op off's over on's;",
            "1.00 = tracing is free.  no-tracer cost = events/op x guard ns / off's CPU per op.",
        ]
        return lines

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        present = set(cells)
        out: list[Target] = []
        for loop, conc in self._grid(cells, "echo"):
            off = Cell(self.name, "echo-off", loop, conc)
            on = Cell(self.name, "echo-on", loop, conc)
            if on not in present or off not in present:
                continue
            rate, cpu = self._pairs_of(on)
            out.append(
                Target.check(
                    f"tracer on/off, pooled echo, {loop}, C={conc}",
                    ">=",
                    ON_TARGET,
                    summary.ratio(rate),
                    summary.ratio(cpu),
                )
            )
            pct = self._overhead(summary, off, on, "cpu_us")
            out.append(
                Target.check(
                    f"no-tracer cost % (est.), pooled echo, {loop}, C={conc}",
                    "<=",
                    OFF_TARGET,
                    None,
                    pct,
                )
            )
        return out
