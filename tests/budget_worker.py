"""One participant of a fleet, run as a process of its own by test_budget_fleet.

``python budget_worker.py MODE --redis URL --port PORT ...``; it says what it
does on stdout, one line each (``ready``, ``held N``, a JSON result), and
never runs longer than ``--max-seconds``.

Modes:

* ``load``: a pool of ``--pool`` connections, ``--tasks`` tasks doing echo
  exchanges from when the file ``--go`` appears, for ``--seconds``; then it
  prints ``{"done": ..., "errors": ..., "open": ..., "budget": {...}}`` and
  keeps its connections until the file ``--exit`` appears.
* ``hold``: dials ``--n`` connections and keeps them (``--idle``: released to
  the pool, idle) until killed.

``--backend sync`` runs either mode on a :class:`conpool.SyncPool` with
threads instead of tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio

import conpool


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "hold"])
    p.add_argument("--redis", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--ttl", type=float, default=10.0)
    p.add_argument("--policy", default="fail-open")
    p.add_argument("--backend", default="asyncio")
    p.add_argument("--go", default="")
    p.add_argument("--exit", default="")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--idle", action="store_true")
    p.add_argument("--max-seconds", type=float, default=60.0)
    return p.parse_args()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def wait_for_file(path: str, deadline: float) -> None:
    while not await anyio.Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        await anyio.sleep(0.02)


async def load(args: argparse.Namespace, deadline: float) -> None:
    budget = conpool.RedisBudget(
        args.redis, args.limit, lease_ttl=args.ttl, on_unavailable=args.policy
    )
    ep = conpool.Endpoint("127.0.0.1", args.port)
    config = conpool.Config(max_connections_per_endpoint=args.pool, acquire_timeout=30.0)
    done = errors = 0
    failures: list[str] = []
    async with conpool.Pool(config, budget=budget) as pool:
        say("ready")
        await wait_for_file(args.go, deadline)
        stop = time.monotonic() + args.seconds

        async def worker(i: int) -> None:
            nonlocal done, errors
            payload = f"w{os.getpid()}-{i}".encode()
            while time.monotonic() < stop:
                try:
                    async with pool.connection(ep) as conn:
                        await conn.send(payload)
                        got = b""
                        while len(got) < len(payload):
                            got += await conn.receive()
                        assert got == payload
                        # A request takes a little while at the server.
                        await anyio.sleep(0.002)
                    done += 1
                except (conpool.PoolError, OSError) as exc:
                    errors += 1
                    if len(failures) < 5:
                        failures.append(repr(exc))
                    await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for i in range(args.tasks):
                tg.start_soon(worker, i)
        stats = pool.stats()
        result: dict[str, Any] = {
            "done": done,
            "errors": errors,
            "failures": failures,
            "open": stats.active + stats.idle,
            "budget": dataclasses.asdict(stats.budget) if stats.budget else None,
        }
        say(json.dumps(result))
        if args.exit:
            await wait_for_file(args.exit, deadline)


async def hold(args: argparse.Namespace, deadline: float) -> None:
    budget = conpool.RedisBudget(args.redis, args.limit, lease_ttl=args.ttl)
    ep = conpool.Endpoint("127.0.0.1", args.port)
    config = conpool.Config(max_connections_per_endpoint=args.n)
    async with conpool.Pool(config, budget=budget) as pool:
        conns = [await pool.acquire(ep) for _ in range(args.n)]
        if args.idle:
            for conn in conns:
                await pool.release(conn)
        say(f"held {args.n}")
        while time.monotonic() < deadline:
            await anyio.sleep(0.1)
            if args.idle:
                stats = pool.stats()
                say(f"open {stats.active + stats.idle}")


def wait_for_file_sync(path: str, deadline: float) -> None:
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


def load_sync(args: argparse.Namespace, deadline: float) -> None:
    """``load`` on a SyncPool: ``--tasks`` threads."""
    budget = conpool.RedisBudget(
        args.redis, args.limit, lease_ttl=args.ttl, on_unavailable=args.policy
    )
    ep = conpool.Endpoint("127.0.0.1", args.port)
    config = conpool.Config(max_connections_per_endpoint=args.pool, acquire_timeout=30.0)
    counts = {"done": 0, "errors": 0}
    failures: list[str] = []
    lock = threading.Lock()
    with conpool.SyncPool(config, budget=budget) as pool:
        say("ready")
        wait_for_file_sync(args.go, deadline)
        stop = time.monotonic() + args.seconds

        def worker(i: int) -> None:
            payload = f"w{os.getpid()}-{i}".encode()
            while time.monotonic() < stop:
                try:
                    with pool.connection(ep) as conn:
                        conn.send(payload)
                        got = b""
                        while len(got) < len(payload):
                            got += conn.receive()
                        assert got == payload
                        time.sleep(0.002)
                    with lock:
                        counts["done"] += 1
                except (conpool.PoolError, OSError) as exc:
                    with lock:
                        counts["errors"] += 1
                        if len(failures) < 5:
                            failures.append(repr(exc))
                    time.sleep(0.05)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.tasks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 40)
        stats = pool.stats()
        result: dict[str, Any] = {
            **counts,
            "failures": failures,
            "open": stats.active + stats.idle,
            "budget": dataclasses.asdict(stats.budget) if stats.budget else None,
        }
        say(json.dumps(result))
        if args.exit:
            wait_for_file_sync(args.exit, deadline)


def hold_sync(args: argparse.Namespace, deadline: float) -> None:
    """``hold`` on a SyncPool."""
    budget = conpool.RedisBudget(args.redis, args.limit, lease_ttl=args.ttl)
    ep = conpool.Endpoint("127.0.0.1", args.port)
    config = conpool.Config(max_connections_per_endpoint=args.n)
    with conpool.SyncPool(config, budget=budget) as pool:
        conns = [pool.acquire(ep) for _ in range(args.n)]
        if args.idle:
            for conn in conns:
                pool.release(conn)
        say(f"held {args.n}")
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if args.idle:
                stats = pool.stats()
                say(f"open {stats.active + stats.idle}")


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    deadline = time.monotonic() + args.max_seconds
    if args.backend == "sync":
        (load_sync if args.mode == "load" else hold_sync)(args, deadline)
        return
    run = load if args.mode == "load" else hold
    backend, options = args.backend, {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}
    anyio.run(run, args, deadline, backend=backend, backend_options=options)


if __name__ == "__main__":
    # Run as a script: the test directory is not a package.
    sys.path.insert(0, str(Path(__file__).parent))
    main()
