"""``hold``: 10,000 connections open at once: 64 tasks acquire them from one
name of 8 addresses (echo listeners on 127.0.3.1-8), hold them, echo a byte
on each, release them, acquire all again from idle, and close the pool."""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from bench import base, timing
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary, Workload
from bench.procs import raise_nofile, server_core, status_kb
from bench.servers import addresses, start

N, TASKS, ADDRS = 10_000, 64, 8


def _hold_cell(spec: CellSpec) -> Metrics:
    import anyio

    import conpool

    n = spec.cell.conc
    need = n + 512
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < need:
        return {"skipped": 1.0, "nofile_hard": float(hard), "nofile_needed": float(need)}
    raise_nofile(need)
    ips = addresses("127.0.3", ADDRS)
    resolver = conpool.StaticResolver({"hold.bench.test": ips})
    config = conpool.Config(
        max_connections_per_endpoint=n,
        max_connections=n,
        connect_timeout=30.0,
        max_idle_time=600.0,
        max_connection_lifetime=3600.0,
    )

    with start("echo", ips, cpu=server_core(spec.cpu), connections=n + 256) as srv:
        endpoint = conpool.Endpoint("hold.bench.test", srv.port)

        async def main() -> Metrics:
            out: Metrics = {"skipped": 0.0}
            rss0 = status_kb("VmRSS")
            async with conpool.Pool(config, resolver=resolver) as pool:
                held: list[Any] = []
                todo = iter(range(n))

                async def opener() -> None:
                    held.extend([await pool.acquire(endpoint) for _ in todo])

                w0, c0 = time.perf_counter(), time.process_time()
                async with anyio.create_task_group() as tg:
                    for _ in range(TASKS):
                        tg.start_soon(opener)
                w1, c1 = time.perf_counter(), time.process_time()
                stats = pool.stats().endpoints[endpoint]
                if stats.active != n or len(held) != n:
                    raise RuntimeError(f"{stats.active} active connections, expected {n}")
                spread = [a.active for a in stats.addresses.values()]
                out["open_s"] = w1 - w0
                out["open_cpu_us"] = (c1 - c0) / n * 1e6
                out["addr_min"], out["addr_max"] = float(min(spread)), float(max(spread))
                out["rss_mb"] = status_kb("VmRSS") / 1024
                out["rss_kb_per_conn"] = (status_kb("VmRSS") - rss0) / n
                w0 = time.perf_counter()
                for conn in held:
                    await conn.send(b"!")
                for conn in held:
                    if await conn.receive() != b"!":
                        raise RuntimeError(f"{conn!r} did not echo")
                out["echo_s"] = time.perf_counter() - w0
                c0 = time.process_time()
                for conn in held:
                    await pool.release(conn)
                out["release_cpu_us"] = (time.process_time() - c0) / n * 1e6
                held.clear()
                c0 = time.process_time()  # all of them again, from idle, then back
                held = [await pool.acquire(endpoint) for _ in range(n)]
                for conn in held:
                    await pool.release(conn)
                out["reuse_cpu_us"] = (time.process_time() - c0) / n * 1e6
                held.clear()
                stats = pool.stats().endpoints[endpoint]
                if stats.created != n or stats.idle != n:
                    raise RuntimeError(f"created {stats.created}, idle {stats.idle}, expected {n}")
                w0 = time.perf_counter()
            out["close_s"] = time.perf_counter() - w0
            out["peak_rss_mb"] = status_kb("VmHWM") / 1024
            return out

        return timing.run_anyio(spec.cell.loop, main)


class Hold(Workload):
    name = "hold"
    title = f"{N:,} connections open at once ({TASKS} tasks, {ADDRS} addresses)"
    impls: ClassVar[Impls] = {"conpool": LOOPS}
    seconds = quick_seconds = (2.5, 0.0)  # no phase: ~2-3 s of dialling, holding and closing

    def cells(self, opts: base.Options) -> list[Cell]:
        loops = ("uvloop",) if opts.quick else LOOPS  # --quick: uvloop only
        return [Cell(self.name, "conpool", loop, N) for loop in loops]

    def run(self, spec: CellSpec) -> Metrics:
        return _hold_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        columns = {
            "open s": "open_s",
            "open cpu µs": "open_cpu_us",
            "echo all s": "echo_s",
            "release cpu µs": "release_cpu_us",
            "reacquire+release cpu µs": "reuse_cpu_us",
            "close s": "close_s",
            "RSS MB": "rss_mb",
            "RSS KB/conn": "rss_kb_per_conn",
            "peak RSS MB": "peak_rss_mb",
        }
        rows, skipped = [], []
        for c in sorted(cells, key=lambda c: base.loop_order(c.loop)):

            def get(metric: str, c: Cell = c) -> float:
                stat = summary.cell(c, metric)
                return float("nan") if stat is None else stat.median

            if get("skipped") > 0:
                hard, need = get("nofile_hard"), get("nofile_needed")
                skipped.append(
                    f"{c.loop}: SKIPPED: the hard RLIMIT_NOFILE is {hard:g}, {need:g} needed"
                )
                continue
            row = [
                c.loop,
                str(c.conc),
                *(base.fmt_stat(summary.cell(c, m)) for m in columns.values()),
            ]
            rows.append([*row, f"{get('addr_min'):g}-{get('addr_max'):g}"])
        out = [
            "open: C tasks acquire all N (dial), CPU µs per connection; echo all: one byte there",
            "and back on each held connection; then release all, acquire all again from idle and",
            "release (CPU µs per connection), close the pool.  RSS: after opening.",
            "",
        ]
        if rows:
            out += base.table(["loop", "N", *columns, "conns per address"], rows)
        return out + skipped
