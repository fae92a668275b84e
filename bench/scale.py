"""``scale``: acquire + release with 1 to 10,000 endpoints of 1 or 64 addresses.

``core-*`` cells drive the state machine alone (no I/O, no loop; up to
640,000 idle records, which real sockets could not hold); ``pool-*`` cells
the full Pool on uvloop over real idle connections to echo listeners on
127.0.2.1-64.  Each cell times two patterns: ``same`` (one endpoint again
and again) and ``spread`` (every endpoint in turn, shuffled), as a ratio to
the 1-endpoint, 1-address cell of its family.
"""

from __future__ import annotations

import gc
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from bench import base, timing
from bench.base import Cell, CellSpec, Impls, Metrics, Summary, Target, Workload
from bench.procs import raise_nofile, server_core
from bench.servers import addresses, start

TARGET = 1.2  # x base
PATTERNS = ("same", "spread")


def _orders(keys: list[Any]) -> dict[str, list[Any]]:
    return {"same": [keys[0]], "spread": random.Random(1).sample(keys, len(keys))}


def _core_cell(spec: CellSpec, n_addrs: int) -> Metrics:
    from bench import _internals

    t0 = time.perf_counter()
    gc.disable()  # building 640,000 records is otherwise mostly full collections
    state, keys = _internals.build_core(spec.cell.conc, addresses("127.0.2", n_addrs))
    gc.enable()
    out: Metrics = {"setup_s": time.perf_counter() - t0}
    gc.collect()
    gc.freeze()
    for pattern, order in _orders(keys).items():
        batch = _internals.core_pairs(state, order)
        out[f"us_{pattern}"], out[f"cpu_us_{pattern}"] = timing.time_sync(
            batch, spec.warmup, spec.duration
        )
    if not _internals.core_at_rest(state):
        raise RuntimeError("the core closed or woke something: the setup is wrong")
    return out


def _pool_pairs(pool: Any, order: list[Any]) -> Callable[[int], Awaitable[None]]:
    """``batch(k)``: k acquire + release pairs, endpoints in ``order`` cyclically."""
    it = itertools.cycle(order)
    acquire, release = pool.acquire, pool.release

    async def batch(k: int) -> None:
        for key in itertools.islice(it, k):
            conn = await acquire(key)
            await release(conn)

    return batch


def _pool_cell(spec: CellSpec, n_addrs: int) -> Metrics:
    import conpool

    n = spec.cell.conc
    total = n * n_addrs
    raise_nofile(total + 512)
    ips = addresses("127.0.2", n_addrs)
    names = [f"e{i}.scale.test" for i in range(n)]
    resolver = conpool.StaticResolver({name: ips for name in names})
    config = conpool.Config(
        max_connections_per_endpoint=n_addrs, max_idle_time=600.0, max_connection_lifetime=3600.0
    )

    with start("echo", ips, cpu=server_core(spec.cpu), connections=total + 64) as srv:
        keys = [conpool.Endpoint(name, srv.port) for name in names]

        async def main() -> Metrics:
            out: Metrics = {}
            async with conpool.Pool(config, resolver=resolver) as pool:
                t0 = time.perf_counter()
                for key in keys:
                    held = [await pool.acquire(key) for _ in range(n_addrs)]
                    for conn in held:
                        await pool.release(conn)
                out["setup_s"] = time.perf_counter() - t0
                for key, s in pool.stats().endpoints.items():
                    if s.idle != n_addrs or len(s.addresses) != n_addrs:
                        raise RuntimeError(f"expected {n_addrs} idle addresses on {key}")
                gc.collect()
                for pattern, order in _orders(keys).items():
                    sample = await timing.time_batches(
                        _pool_pairs(pool, order), spec.warmup, spec.duration
                    )
                    out[f"us_{pattern}"], out[f"cpu_us_{pattern}"] = sample.per_op_us()
                created = sum(e.created for e in pool.stats().endpoints.values())
                if created != total:
                    raise RuntimeError(f"{created} connections were made, expected {total}")
            return out

        return timing.run_anyio(spec.cell.loop, main)


class Scale(Workload):
    name = "scale"
    title = "Acquire + release vs endpoints and addresses per endpoint"
    impls: ClassVar[Impls] = {
        "core-a1": (base.CORE,),
        "core-a64": (base.CORE,),
        "pool-a1": ("uvloop",),
        "pool-a64": ("uvloop",),
    }
    SIZES: ClassVar[Mapping[str, tuple[int, ...]]] = {
        "core-a1": (1, 100, 10_000),
        "core-a64": (1, 100, 10_000),
        "pool-a1": (1, 100, 1_000),
        "pool-a64": (1, 100),
    }
    # Two patterns per cell, plus the setup (up to ~3 s for 640,000 records
    # in the core, ~1 s for 6,400 real connections).
    seconds = (0.3, 0.1)
    phases = 4

    def cells(self, opts: base.Options) -> list[Cell]:
        return [
            Cell(self.name, impl, loop, n)
            for impl, loops in self.impls.items()
            for loop in loops
            for n in self.SIZES[impl]
        ]

    def group(self, cell: Cell) -> str:
        return f"{cell.workload}/{cell.impl.split('-')[0]}"  # a family, with its base

    def run(self, spec: CellSpec) -> Metrics:
        family, a = spec.cell.impl.split("-")
        return (_core_cell if family == "core" else _pool_cell)(spec, int(a[1:]))

    def _base(self, cell: Cell) -> Cell:
        return Cell(self.name, cell.impl.split("-")[0] + "-a1", cell.loop, 1)

    def _ratio(self, cell: Cell, pattern: str, cpu: bool) -> base.Ratio:
        metric = f"{'cpu_' if cpu else ''}us_{pattern}"
        return base.Ratio(
            f"x base {'cpu ' if cpu else ''}{pattern}", cell, self._base(cell), metric
        )

    def ratios(self, cells: Sequence[Cell]) -> list[base.Ratio]:
        present = set(cells)
        return [
            self._ratio(c, p, cpu)
            for c in cells
            if self._base(c) in present
            for p in PATTERNS
            for cpu in (False, True)
        ]

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        def stat(cell: Cell, metric: str) -> str:
            return base.fmt_stat(summary.cell(cell, metric))

        def ratio(cell: Cell, pattern: str) -> str:
            return base.fmt_stat(summary.ratio(self._ratio(cell, pattern, True)), base.fmt_ratio)

        rows = [
            [
                "core alone" if c.loop == base.CORE else f"Pool, {c.loop}",
                str(c.conc),
                c.impl.split("-a")[1],
                stat(c, "cpu_us_same"),
                ratio(c, "same"),
                stat(c, "cpu_us_spread"),
                ratio(c, "spread"),
                stat(c, "us_spread"),
                stat(c, "setup_s"),
            ]
            for c in sorted(cells, key=lambda c: (c.impl.split("-")[0], int(c.impl[6:]), c.conc))
        ]
        header = ["what", "endpoints", "addrs", "same cpu µs", "x base", "spread cpu µs"]
        header += ["x base", "spread wall µs", "setup s"]
        return [
            "CPU µs per acquire + release; 'x base' = over the 1-endpoint, 1-address cell of the",
            "same family (paired).  same: one endpoint again and again; spread: every endpoint in",
            "turn, shuffled.  Every address holds one idle connection.",
            "",
            *base.table(header, rows),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out = []
        for c in sorted(cells, key=lambda c: (c.impl, c.conc)):
            if c != self._base(c):
                p = "spread" if c.conc > 1 else "same"
                family, a = c.impl.split("-")
                what = f"scale {family} {c.conc} endpoints x {a[1:]} addrs, {p}, x base"
                wall, cpu = (summary.ratio(self._ratio(c, p, x)) for x in (False, True))
                out.append(Target.check(what, "<=", TARGET, wall, cpu))
        return out
