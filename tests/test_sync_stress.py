"""SyncPool under many threads, and across fork().

The load test is bounded in count and in time: 64 threads of up to 2,000
requests each, stopping early after ``BUDGET`` seconds (a loaded 2-core
machine); what ran is printed.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
import warnings
from collections import Counter

import conpool
from helpers_pool import check_quiet, fd_count
from servers import EchoServer

THREADS = 64
REQUESTS = 2000
BUDGET = 60.0


def _echo(conn: conpool.SyncConnection, payload: bytes) -> None:
    conn.send(payload)
    data = b""
    while len(data) < len(payload):
        chunk = conn.receive()
        assert chunk
        data += chunk
    assert data == payload


class Boom(Exception):
    pass


def test_many_threads_accounting_adds_up(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    baseline = fd_count()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + BUDGET
    config = conpool.Config(max_connections_per_endpoint=8, max_idle_time=0.5, connect_retries=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool = conpool.SyncPool(config)

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            mine: Counter[str] = Counter()
            try:
                for _ in range(REQUESTS):
                    if time.monotonic() > stop_at:
                        break
                    roll = rng.random()
                    try:
                        if roll < 0.00004:
                            # Die holding a connection (never released).
                            pool.acquire(ep, timeout=5)
                            mine["died"] += 1
                            raise Boom("thread died holding a connection")
                        with pool.connection(ep, timeout=rng.choice([None, 0.0, 0.001, 0.05])) as c:
                            _echo(c, b"x" * 64)
                            if roll < 0.05:
                                raise Boom("inside the block")
                        mine["ok"] += 1
                    except conpool.PoolTimeout:
                        mine["timeout"] += 1
                    except Boom:
                        if roll < 0.00004:
                            return
                        mine["boom"] += 1
            finally:
                with lock:
                    counts.update(mine)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BUDGET + 60)
        stuck = [t for t in threads if t.is_alive()]
        assert not stuck, f"{len(stuck)} threads stuck"
        gc.collect()
        # Entry points run the reclaims of dropped connections.
        with pool.connection(ep, timeout=5) as c:
            _echo(c, b"last")
        stats = check_quiet(pool)
        e = stats.endpoints[ep]
        total = sum(counts.values())
        print(f"\nSyncPool stress: {dict(counts)} = {total} requests, {e}")
        assert counts["ok"] > 0 and counts["boom"] > 0
        leaked = [w for w in caught if "garbage-collected without being released" in str(w.message)]
        assert len(leaked) == counts["died"]
        # Every hand-out is a creation or a reuse; every broken one was closed.
        assert e.created + e.reused == total - counts["timeout"] + 1
        assert e.closed >= counts["boom"] + counts["died"]
        assert e.created - e.closed == e.idle
        pool.close()
    deadline = time.monotonic() + 10
    while fd_count() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd_count() == baseline


def test_fork_child_starts_empty_parent_keeps_working(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool() as pool:
        held = pool.acquire(ep)
        with pool.connection(ep) as idle:
            _echo(idle, b"parent")
            idle_port = idle.socket.getsockname()[1]
        parent_ports = {held.socket.getsockname()[1], idle_port}
        read, write = os.pipe()
        with warnings.catch_warnings():
            # (pytest's own threads make fork() warn on 3.12+.)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                with pool.connection(ep) as conn:
                    _echo(conn, b"child")
                    port = conn.socket.getsockname()[1]
                    fresh = conn.uses == 1 and port not in parent_ports
                pool.release(held)  # inherited: only the child's descriptor goes
                os.write(write, b"%d" % port)
                code = 0 if fresh and pool.stats().endpoints[ep].created == 1 else 2
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        child_port = int(os.read(read, 100) or b"0")
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_port in echo_server.peer_ports
        assert child_port not in parent_ports
        # The parent's connections, idle and held, still work.
        _echo(held, b"still mine")
        with pool.connection(ep) as conn:
            assert conn.socket.getsockname()[1] == idle_port
            _echo(conn, b"and this one")
        pool.release(held)
        assert pool.stats().endpoints[ep].created == 2
