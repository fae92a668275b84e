"""conpool.RedisBudget across real processes (tests/budget_worker.py), against
a real redis-server and a threaded echo server that counts concurrent
connections, all on loopback.  Every worker is stopped by its PID."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as redis_py

import conpool
from conpool._budget_redis import redis_keys
from servers import EchoServer, RedisServer

pytestmark = pytest.mark.realserver

WORKER = Path(__file__).with_name("budget_worker.py")


class Worker:
    """A budget_worker.py process; its stdout lines read by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The next line starting with ``prefix`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"worker {self.process.pid}: no {prefix!r} line in {timeout} s;"
                    f" stderr:\n{''.join(self.stderr)}"
                )
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"worker {self.process.pid} exited {self.process.returncode}:"
                        f"\n{''.join(self.stderr)}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for reader in self.readers:
            reader.join(10)  # they end at the pipes' EOF
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def workers(*argvs: list[str]) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for argv in argvs:
            started.append(Worker(*argv))  # noqa: PERF401 (each one stopped if the next fails)
        yield started
    finally:
        for w in started:
            w.stop()


def url(server: RedisServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


def fleet_held(rc: redis_py.Redis, port: int) -> int:
    counts = rc.hgetall(redis_keys("conpool", f"127.0.0.1:{port}")[0])
    return sum(int(c) for c in counts.values())


@pytest.mark.parametrize(
    "backends", [["asyncio", "uvloop", "trio"], ["sync"]], ids=["async", "sync"]
)
def test_eight_processes_share_twenty_connections(
    redis: RedisServer, tmp_path: Path, backends: list[str]
) -> None:
    """8 processes x a pool of 10 (10 tasks each), budget 20: the server never
    sees more than 20 connections, and every process does its share of the
    work.  The fleet mixes asyncio, uvloop and trio processes, or is of
    SyncPools with 10 threads each."""
    go, leave = tmp_path / "go", tmp_path / "exit"
    rc = redis_py.Redis(host=redis.host, port=redis.port, decode_responses=True)
    with EchoServer() as echo:
        argvs = [
            [
                *["load", "--redis", url(redis), "--port", str(echo.port), "--limit", "20"],
                *["--pool", "10", "--tasks", "10", "--seconds", "4", "--ttl", "5"],
                *["--backend", backends[i % len(backends)], "--go", str(go), "--exit", str(leave)],
            ]
            for i in range(8)
        ]
        with workers(*argvs) as fleet:
            for w in fleet:
                w.expect("ready", timeout=60)
            go.touch()
            results: list[dict[str, Any]] = [json.loads(w.expect("{")) for w in fleet]
            # Still holding their connections (idle now): Redis counts what
            # the server sees.
            open_now = sum(r["open"] for r in results)
            deadline = time.monotonic() + 10
            while fleet_held(rc, echo.port) != open_now and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fleet_held(rc, echo.port) == open_now
            leave.touch()
            for w in fleet:
                assert w.process.wait(30) == 0, "".join(w.stderr)
        assert echo.max_concurrent <= 20, echo
        done = [r["done"] for r in results]
        errors = [r["errors"] for r in results]
        print("requests per process:", done, "max concurrent:", echo.max_concurrent)
        assert errors == [0] * 8, [r["failures"] for r in results]
        total = sum(done)
        # A fair share is 1/8 of the work; none may fall below a quarter of it.
        assert min(done) >= total / 8 / 4, done
        assert echo.max_concurrent >= 15  # the fleet used its budget
        assert fleet_held(rc, echo.port) == 0  # every lease went back
    rc.close()


@pytest.mark.anyio
async def test_a_killed_process_gives_its_share_back_within_the_ttl(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    ttl = 1.0
    renew = ttl / 3
    argv = ["hold", "--redis", url(redis), "--port", str(echo_server.port)]
    argv += ["--limit", "6", "--n", "6", "--ttl", str(ttl)]
    budget = conpool.RedisBudget(url(redis), limit=6, lease_ttl=ttl)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with workers(argv) as (holder,):
        holder.expect("held 6")
        async with conpool.Pool(conpool.Config(acquire_timeout=20.0), budget=budget) as pool:
            os.kill(holder.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            holder.process.wait(10)
            conns = [await pool.acquire(ep) for _ in range(6)]
            elapsed = time.monotonic() - killed
            print(f"share back {elapsed:.3f} s after SIGKILL (ttl {ttl} s)")
            # Its last renewal was at most one interval before the kill.
            assert ttl - renew - 0.05 <= elapsed <= ttl + renew + 0.5
            for conn in conns:
                await pool.release(conn)


def test_idle_connections_in_one_process_are_given_back_when_another_waits(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    argv = ["hold", "--redis", url(redis), "--port", str(echo_server.port)]
    argv += ["--limit", "8", "--n", "8", "--idle", "--ttl", "10"]
    budget = conpool.RedisBudget(url(redis), limit=8, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)

    async def main() -> float:
        config = conpool.Config(acquire_timeout=10.0)
        async with conpool.Pool(config, budget=budget) as pool:
            start = time.monotonic()
            conns = [await pool.acquire(ep) for _ in range(4)]
            took = time.monotonic() - start
            for conn in conns:
                await pool.release(conn)
            return took

    with workers(argv) as (idler,):
        idler.expect("held 8")
        took = anyio.run(main)
        # The idle process closed four of its eight for us (its share is 4).
        idler.expect("open 4", timeout=10)
        print(f"4 connections given back in {took:.3f} s")
    assert echo_server.max_concurrent <= 8
    assert took < 5.0  # pub/sub, not the ttl or a poll, brought them


@pytest.mark.parametrize("backend", ["asyncio", "sync"])
def test_fleet_rides_out_a_redis_outage_and_converges(
    redis: RedisServer, tmp_path: Path, backend: str
) -> None:
    """Three fail-open processes under load while Redis stops for a second:
    no request fails, each logs the outage, and once Redis is back its
    count of the fleet's connections is the truth again."""
    go, leave = tmp_path / "go", tmp_path / "exit"
    rc = redis_py.Redis(host=redis.host, port=redis.port, decode_responses=True)
    with EchoServer() as echo:
        argvs = [
            [
                *["load", "--redis", url(redis), "--port", str(echo.port), "--limit", "6"],
                *["--pool", "4", "--tasks", "4", "--seconds", "4", "--ttl", "1"],
                *["--go", str(go), "--exit", str(leave), "--backend", backend],
            ]
            for _ in range(3)
        ]
        with workers(*argvs) as fleet:
            for w in fleet:
                w.expect("ready", timeout=60)
            go.touch()
            time.sleep(1.0)
            redis.stop()
            time.sleep(1.0)
            redis.start()
            results = [json.loads(w.expect("{")) for w in fleet]
            open_now = sum(r["open"] for r in results)
            deadline = time.monotonic() + 10
            while fleet_held(rc, echo.port) != open_now and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fleet_held(rc, echo.port) == open_now == echo.current
            leave.touch()
            for w in fleet:
                assert w.process.wait(30) == 0
        assert [r["errors"] for r in results] == [0, 0, 0], [r["failures"] for r in results]
        assert all(r["done"] > 0 for r in results)
        for w in fleet:
            assert "is unavailable" in "".join(w.stderr), "".join(w.stderr)
        # Within local limits only while Redis was away: 3 x 4 at most.
        assert echo.max_concurrent <= 12
    rc.close()


# -- SyncPool: the same proofs, with the test's own pool threaded too ------------------


def test_a_killed_process_gives_its_share_back_within_the_ttl_to_a_sync_pool(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    ttl = 1.0
    renew = ttl / 3
    argv = ["hold", "--redis", url(redis), "--port", str(echo_server.port), "--backend", "sync"]
    argv += ["--limit", "6", "--n", "6", "--ttl", str(ttl)]
    budget = conpool.RedisBudget(url(redis), limit=6, lease_ttl=ttl)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with workers(argv) as (holder,):
        holder.expect("held 6")
        with conpool.SyncPool(conpool.Config(acquire_timeout=20.0), budget=budget) as pool:
            os.kill(holder.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            holder.process.wait(10)
            conns = [pool.acquire(ep) for _ in range(6)]
            elapsed = time.monotonic() - killed
            print(f"share back {elapsed:.3f} s after SIGKILL (ttl {ttl} s)")
            assert ttl - renew - 0.05 <= elapsed <= ttl + renew + 0.5
            assert echo_server.max_concurrent <= 6 + 1  # (the killed one's, closing)
            for conn in conns:
                pool.release(conn)


def test_idle_connections_of_a_sync_process_are_given_back_to_a_sync_pool(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    argv = ["hold", "--redis", url(redis), "--port", str(echo_server.port), "--backend", "sync"]
    argv += ["--limit", "8", "--n", "8", "--idle", "--ttl", "10"]
    budget = conpool.RedisBudget(url(redis), limit=8, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with workers(argv) as (idler,):
        idler.expect("held 8")
        with conpool.SyncPool(conpool.Config(acquire_timeout=10.0), budget=budget) as pool:
            start = time.monotonic()
            conns = [pool.acquire(ep) for _ in range(4)]
            took = time.monotonic() - start
            stats = pool.stats().budget
            assert stats is not None and stats.waited >= 1
            for conn in conns:
                pool.release(conn)
        idler.expect("open 4", timeout=10)
        print(f"4 connections given back in {took:.3f} s")
    assert echo_server.max_concurrent <= 8
    assert took < 5.0  # pub/sub, not the ttl or a poll, brought them
