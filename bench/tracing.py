"""``tracing``: ``Pool(tracer=None)`` against ``Pool(tracer=Tracer(65536))``,
on the echo workload's pooled requests and on the uncontended pair.

With no tracer each trace point should cost one attribute check.  There is
no build without trace points to compare with, so the off cells measure the
pieces: the check itself (``guard_ns``), the trace points an operation
passes (``events_per_op``, on cells), and the calls into the tracing code per
pair with no tracer (``traced_calls_per_op``: 0 means each trace point on
that path is the check alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from bench import base
from bench.acquire import conpool_pairs
from bench.base import Cell, CellSpec, Impls, Metrics, Summary, Target, Workload
from bench.echo import conpool_echo

CAPACITY = 65536
ON_TARGET = 0.90  # tracer attached: at most 10 % of pooled echo throughput lost
OFF_TARGET = 1.0  # no tracer: at most 1 % of a request's CPU
KINDS = {  # kind: (what, throughput metric, CPU metric)
    "echo": ("Pooled echo, 64 B", "rps", "cpu_us"),
    "pair": ("Uncontended acquire + release", "us_per_pair", "cpu_us_per_pair"),
}


def _by_hand(pool: Any, endpoint: Any, n: int) -> None:
    """n acquire + release pairs of an idle connection, driven without a
    loop (neither suspends), so that a profile hook sees only the pool."""
    for _ in range(n):
        coro = pool.acquire(endpoint)
        try:
            coro.send(None)
        except StopIteration as done:
            conn = done.value
        else:
            raise RuntimeError("acquire suspended")
        releasing = pool.release(conn)
        try:
            releasing.send(None)
        except StopIteration:
            pass


def _cell(spec: CellSpec) -> Metrics:
    import conpool
    from bench import _internals

    kind, state = spec.cell.impl.split("-")
    tracer = conpool.Tracer(capacity=CAPACITY) if state == "on" else None

    def extra(pool: Any, total: int) -> Metrics:
        if tracer is not None:
            return {"events_per_op": _internals.trace_events(tracer) / total}
        out = {"guard_ns": _internals.guard_ns(pool)}
        if kind == "pair":
            endpoint = conpool.Endpoint(spec.host, spec.port)
            calls = _internals.count_traced_calls(lambda: _by_hand(pool, endpoint, 2000))
            out["traced_calls_per_op"] = calls / 2000
        return out

    if kind == "echo":
        return conpool_echo(spec, tracer=tracer, extra=extra)
    return conpool_pairs(spec, False, tracer=tracer, extra=extra)


class Tracing(Workload):
    name = "tracing"
    title = "Tracing cost: Pool(tracer=None) vs Pool(tracer=Tracer(65536))"
    impls: ClassVar[Impls] = {
        f"{k}-{s}": ("asyncio", "uvloop") for k in KINDS for s in ("off", "on")
    }
    quick_seconds = (0.15, 0.05)

    def cells(self, opts: base.Options) -> list[Cell]:
        echo = tuple(c for c in opts.conc if c >= 2) or opts.conc
        if opts.quick and opts.conc == (1, 16, 64):
            echo = (64,)  # --quick with the default levels: the largest only
        return [
            Cell(self.name, impl, loop, c)
            for impl, loops in self.impls.items()
            for loop in loops
            for c in (echo if impl.startswith("echo") else (1,))
        ]

    def run(self, spec: CellSpec) -> Metrics:
        return _cell(spec)

    def _pair(self, on: Cell) -> tuple[base.Ratio, base.Ratio]:
        """on/off by throughput (pairs: off's µs over on's) and by CPU per op."""
        off = on.but(on.impl.replace("-on", "-off"))
        _, rate, cpu = KINDS[on.impl.split("-")[0]]
        num, den = (on, off) if rate == "rps" else (off, on)
        return base.Ratio("on/off", num, den, rate), base.Ratio("on/off cpu", off, on, cpu)

    def ratios(self, cells: Sequence[Cell]) -> list[base.Ratio]:
        present = set(cells)
        return [
            r
            for c in cells
            if c.impl.endswith("-on") and c.but(c.impl.replace("-on", "-off")) in present
            for r in self._pair(c)
        ]

    def _overhead(self, summary: Summary, on: Cell) -> base.Stat | None:
        """The no-tracer cost, % of the operation's CPU: events/op x guard / CPU."""
        off = on.but(on.impl.replace("-on", "-off"))
        guard = summary.cell(off, "guard_ns")
        events = summary.cell(on, "events_per_op")
        cpu = summary.cell(off, KINDS[on.impl.split("-")[0]][2])
        if guard is None or events is None or cpu is None:
            return None
        return base.Stat.one(events.median * guard.median / (cpu.median * 1000) * 100)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        lines: list[str] = []
        for kind, (what, rate, cpu) in KINDS.items():
            rows = []
            for loop, conc in base.grid(c for c in cells if c.impl.startswith(kind)):
                on, off = (
                    Cell(self.name, f"{kind}-on", loop, conc),
                    Cell(self.name, f"{kind}-off", loop, conc),
                )
                scale = 1e-3 if rate == "rps" else 1.0
                row = [loop, str(conc)]
                for c in (off, on):
                    row += [
                        base.fmt_stat(summary.cell(c, rate), scale=scale),
                        base.fmt_stat(summary.cell(c, cpu)),
                    ]
                row += [base.fmt_stat(summary.ratio(r), base.fmt_ratio) for r in self._pair(on)]
                row += [
                    base.fmt_stat(summary.cell(on, "events_per_op")),
                    base.fmt_stat(summary.cell(off, "guard_ns")),
                ]
                pct = self._overhead(summary, on)
                rows.append([*row, "-" if pct is None else f"{pct.median:.2f} %"])
            if not rows:
                continue
            unit = "k req/s" if rate == "rps" else "µs/pair"
            header = ["loop", "C", f"off {unit}", "off cpu µs", f"on {unit}", "on cpu µs"]
            header += ["on/off", "on/off cpu", "events/op", "guard ns", "no-tracer cost"]
            lines += [f"{what}: off = tracer=None, on = Tracer(capacity={CAPACITY})", ""]
            lines += [*base.table(header, rows), ""]
        calls = [s.max for c in cells if (s := summary.cell(c, "traced_calls_per_op")) is not None]
        if calls:
            lines.append(
                "Calls into the tracing code per acquire + release with tracer=None: "
                f"{max(calls):g} (0: each trace point on that path is the attribute check alone)"
            )
        return [
            *lines,
            "on/off: throughput (pairs: off's µs over on's), and CPU per op off's over on's;",
            "1.00 = tracing is free.  no-tracer cost = events/op x guard ns / off's CPU per op.",
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out: list[Target] = []
        present = set(cells)
        for c in sorted(cells, key=lambda c: (c.loop, c.conc)):
            if c.impl != "echo-on" or c.but("echo-off") not in present:
                continue
            rate, cpu = (summary.ratio(r) for r in self._pair(c))
            where = f"pooled echo, {c.loop}, C={c.conc}"
            out.append(Target.check(f"tracer on/off, {where}", ">=", ON_TARGET, rate, cpu))
            pct = self._overhead(summary, c)
            out.append(
                Target.check(f"no-tracer cost % (est.), {where}", "<=", OFF_TARGET, None, pct)
            )
        return out
