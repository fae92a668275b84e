"""The ``budget`` workload: what a fleet budget (conpool.RedisBudget) adds to a
dial, a close and a hand-out.

Timings on a shared machine say little, so the figures that matter are
counts: Redis commands per operation, read from ``INFO commandstats`` of a
redis-server of its own (targets: one per dial, at most one per close, none
per hand-out).  Mean times with and without the budget are printed beside
them, as an indication only.

The ``threads`` loop measures a :class:`conpool.SyncPool` with the same
budget (redis-py's sync client), driven by the same steps: each call of the
pool is a plain call inside a coroutine (one await more per operation than a
threaded caller pays, with and without the budget alike).

``python -m bench --workload budget`` runs it with the others (one cell per
loop); ``python -m bench.budget_workload [--dials N] [--handouts N] [--loop L]``
alone.  It needs redis-server on PATH or in /usr/sbin, and the ``redis``
extra.  Everything runs on loopback; the servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from bench import base
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary, Target, Workload

__all__ = ["Budget", "main", "measure"]

DIALS, HANDOUTS = 100, 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server of our own on a free loopback port."""
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", d]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A threaded echo server on loopback (independent of the loop measured)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.05)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _script_calls(port: int) -> int:
    import redis

    client = redis.Redis(port=port)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


class _Threaded:
    """A :class:`conpool.SyncPool` behind the async cycle's calls."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def __aenter__(self) -> _Threaded:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.pool.close()

    async def acquire(self, ep: Any) -> _ThreadedConn:
        return _ThreadedConn(self.pool.acquire(ep))

    async def release(self, conn: _ThreadedConn) -> None:
        self.pool.release(conn.conn)


class _ThreadedConn:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def aclose(self) -> None:
        self.conn.close()


async def _cycle(
    redis_port: int | None, echo_port: int, dials: int, handouts: int, threads: bool = False
) -> dict[str, float]:
    # (Imported here: the bench runner's own process loads no event loop.)
    import anyio

    import conpool

    budget = None
    if redis_port is not None:
        # A long ttl: no renewal inside the counted windows.
        budget = conpool.RedisBudget(f"redis://127.0.0.1:{redis_port}/0", dials + 1, lease_ttl=600)
    ep = conpool.Endpoint("127.0.0.1", echo_port)
    config = conpool.Config(max_connections_per_endpoint=dials + 1)
    out: dict[str, float] = {}

    def calls() -> int:
        return _script_calls(redis_port) if redis_port is not None else 0

    pool: Any = (
        _Threaded(conpool.SyncPool(config, budget=budget))
        if threads
        else conpool.Pool(config, budget=budget)
    )
    async with pool:
        await pool.release(await pool.acquire(ep))  # warm up (loads the script)
        idle = await pool.acquire(ep)  # (not a dial: the warm-up's connection)
        start_calls = calls()
        t = time.perf_counter()
        conns = [await pool.acquire(ep) for _ in range(dials)]
        out["dial_us"] = (time.perf_counter() - t) / dials * 1e6
        out["calls_per_dial"] = (calls() - start_calls) / dials
        conns.append(idle)
        for conn in conns:
            await pool.release(conn)
        start_calls = calls()
        t = time.perf_counter()
        for _ in range(handouts):
            conn = await pool.acquire(ep)
            await pool.release(conn)
        out["handout_us"] = (time.perf_counter() - t) / handouts * 1e6
        await anyio.sleep(0.2)  # room for a flush, were one due
        out["calls_per_handout"] = (calls() - start_calls) / handouts
        held = [await pool.acquire(ep) for _ in range(dials)]
        start_calls = calls()
        for conn in held:
            await conn.aclose()
            await pool.release(conn)
        await anyio.sleep(0.3)  # the grace and the flush
        out["calls_per_close"] = (calls() - start_calls) / dials
        # One close at a time, each flushed before the next: the worst case.
        singles = [await pool.acquire(ep) for _ in range(min(dials, 20))]
        start_calls = calls()
        for conn in singles:
            await conn.aclose()
            await pool.release(conn)
            await anyio.sleep(0.08)
        out["calls_per_lone_close"] = (calls() - start_calls) / len(singles)
    return out


def measure(loop: str, dials: int, handouts: int) -> dict[str, dict[str, float]]:
    """``{"budget": {...}, "local": {...}}`` for one event loop."""
    import anyio

    threads = loop == "threads"
    backend, options = ("asyncio", {"use_uvloop": True}) if loop == "uvloop" else (loop, {})
    if threads:
        backend = "asyncio"
    results: dict[str, dict[str, float]] = {}
    with redis_server() as redis_port, echo_server() as echo_port:
        for name, port in (("local", None), ("budget", redis_port)):
            results[name] = anyio.run(
                _cycle,
                port,
                echo_port,
                dials,
                handouts,
                threads,
                backend=backend,
                backend_options=options,
            )
    return results


_COLUMNS = {
    "calls/dial": "budget_calls_per_dial",
    "calls/close": "budget_calls_per_close",
    "calls/lone close": "budget_calls_per_lone_close",
    "calls/hand-out": "budget_calls_per_handout",
    "dial µs local": "local_dial_us",
    "dial µs budget": "budget_dial_us",
    "hand-out µs local": "local_handout_us",
    "hand-out µs budget": "budget_handout_us",
}


class Budget(Workload):
    """The registry's view of this module: one cell per loop."""

    name = "budget"
    title = "a fleet budget (RedisBudget): Redis calls per dial, close and hand-out"
    impls: ClassVar[Impls] = {"conpool": (*LOOPS, "threads")}
    requires: ClassVar[dict[str, str]] = {"conpool": "redis"}
    seconds = quick_seconds = (3.0, 0.0)  # no phase: a fixed count of operations

    def cells(self, opts: base.Options) -> list[Cell]:
        return [Cell(self.name, "conpool", loop, DIALS) for loop in (*LOOPS, "threads")]

    def run(self, spec: CellSpec) -> Metrics:
        results = measure(spec.cell.loop, spec.cell.conc, HANDOUTS)
        return {f"{kind}_{k}": v for kind, figures in results.items() for k, v in figures.items()}

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out = []
        for c in cells:
            for what, metric, limit in (
                ("Redis calls per dial", "budget_calls_per_dial", 1.0),
                ("Redis calls per close", "budget_calls_per_lone_close", 1.0),
                ("Redis calls per hand-out", "budget_calls_per_handout", 0.0),
            ):
                stat = summary.cell(c, metric)
                out.append(Target.check(f"budget {c.loop}: {what}", "<=", limit, stat, None))
        return out

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        rows = [
            [c.loop, *(base.fmt_stat(summary.cell(c, m)) for m in _COLUMNS.values())]
            for c in sorted(cells, key=lambda c: base.loop_order(c.loop))
        ]
        return [
            f"{DIALS} dials, {HANDOUTS} hand-outs; calls: Redis script calls (INFO",
            "commandstats); close: all closed at once (batched); lone close: one at a time.",
            "Times are indicative only.",
            "",
            *base.table(["loop", *_COLUMNS], rows),
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget_workload")
    parser.add_argument("--dials", type=int, default=100)
    parser.add_argument("--handouts", type=int, default=2000)
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "trio", "threads"],
        default="asyncio",
        help="threads: a SyncPool",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = measure(args.loop, args.dials, args.handouts)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    b, local = results["budget"], results["local"]
    print(f"budget workload on {args.loop}: {args.dials} dials, {args.handouts} hand-outs")
    print(f"  Redis script calls per dial        {b['calls_per_dial']:.2f}   (target 1)")
    print(
        f"  Redis script calls per close       {b['calls_per_close']:.2f}   (target <= 1; batched)"
    )
    print(f"  ... per close, one at a time       {b['calls_per_lone_close']:.2f}")
    print(f"  Redis script calls per hand-out    {b['calls_per_handout']:.4f} (target 0)")
    print(
        f"  dial      {local['dial_us']:8.1f} us without, {b['dial_us']:8.1f} us with "
        "(indicative: a shared machine)"
    )
    print(f"  hand-out  {local['handout_us']:8.1f} us without, {b['handout_us']:8.1f} us with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
