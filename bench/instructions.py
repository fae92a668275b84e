"""The program ``bench.profiling --tool callgrind`` runs under valgrind.

``python -m bench.instructions OP LOOP CONC WARMUP N PORT`` does ``WARMUP``
operations, calls ``os.getppid()``, does ``N`` more, calls it again and
exits.  Under ``valgrind --tool=callgrind --dump-before=getppid`` the
second dump holds the machine instructions of the ``N`` operations alone
(startup, imports, dialling and the warmup are in the first), so the count
per operation does not move with the machine's load, and it compares any
two source trees (``PYTHONPATH``) exactly: only conpool's public API is
used here.

Operations (C tasks share one counter; the two marks are made by whichever
task counts past them, so the operations in flight there move the count by
at most C over ``N``):

* ``pair``: ``acquire`` + ``release`` of one idle connection (C = 1);
* ``lease``: ``async with pool.connection(ep): pass`` (C = 1);
* ``contended``: C tasks, a limit of C/4: acquire, ``sleep(0)``, release;
* ``yield``: the same C tasks doing only the ``sleep(0)`` (what
  ``contended`` is measured over);
* ``echo``: ``async with pool.connection(ep)``, 64 bytes there and back
  (a limit of C, so no task waits);
* ``raw``: the same round trip on one connection per task (asyncio
  streams; trio's ``SocketStream``), as the ``echo`` workload's ``raw``;
* ``sync-echo``: C threads, ``with pool.connection(ep)`` on a
  :class:`conpool.SyncPool` (limit C), 64 bytes there and back (LOOP is
  ignored: threads);
* ``sync-raw``: the same round trip on one blocking socket per thread (what
  ``sync-echo`` is measured over).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

OPS = ("pair", "lease", "contended", "yield", "echo", "raw", "sync-echo", "sync-raw")
SIZE = 64
MESSAGE = bytes(range(SIZE))
HOST = "127.0.0.1"


class Counter:
    """The operations done so far, and the two marks."""

    __slots__ = ("marks", "n", "stop")

    def __init__(self, warmup: int, n: int) -> None:
        self.n = 0
        self.marks = [warmup, warmup + n]
        self.stop = False

    def tick(self) -> None:
        self.n += 1
        if self.marks and self.n == self.marks[0]:
            # (valgrind dumps the counters before this call: the mark.)
            os.getppid()
            self.marks.pop(0)
            if not self.marks:
                self.stop = True


Worker = Callable[[Counter], Coroutine[Any, Any, None]]


def _sleep(loop: str) -> Callable[[float], Awaitable[None]]:
    if loop == "trio":
        import trio

        return trio.sleep
    return asyncio.sleep


def _run_anyio(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    import anyio

    if loop == "trio":
        anyio.run(main, backend="trio")
    else:
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": loop == "uvloop"})


async def _spawn(worker: Worker, conc: int, counter: Counter) -> None:
    import anyio

    async with anyio.create_task_group() as tg:
        for _ in range(conc):
            tg.start_soon(worker, counter)


def _pool_op(op: str, loop: str, conc: int, counter: Counter, port: int) -> None:
    import conpool

    endpoint = conpool.Endpoint(HOST, port)
    limit = max(1, conc // 4) if op == "contended" else conc
    config = conpool.Config(max_connections_per_endpoint=limit)
    yield_ = _sleep(loop)
    pool: Any = None

    async def pair(c: Counter) -> None:
        pool_acquire, pool_release = pool.acquire, pool.release
        while not c.stop:
            conn = await pool_acquire(endpoint)
            await pool_release(conn)
            c.tick()

    async def lease(c: Counter) -> None:
        while not c.stop:
            async with pool.connection(endpoint):
                pass
            c.tick()

    async def contended(c: Counter) -> None:
        while not c.stop:
            conn = await pool.acquire(endpoint)
            await yield_(0)
            await pool.release(conn)
            c.tick()

    async def echo(c: Counter) -> None:
        while not c.stop:
            async with pool.connection(endpoint) as conn:
                await conn.send(MESSAGE)
                got = len(await conn.receive())
                while got < SIZE:
                    got += len(await conn.receive())
            c.tick()

    workers: dict[str, Worker] = {
        "pair": pair,
        "lease": lease,
        "contended": contended,
        "echo": echo,
    }

    async def main() -> None:
        nonlocal pool
        async with conpool.Pool(config) as pool:
            await _spawn(workers[op], conc, counter)

    _run_anyio(loop, main)


def _yield(loop: str, conc: int, counter: Counter) -> None:
    yield_ = _sleep(loop)

    async def bare(c: Counter) -> None:
        while not c.stop:
            await yield_(0)
            c.tick()

    async def main() -> None:
        await _spawn(bare, conc, counter)

    _run_anyio(loop, main)


def _raw(loop: str, conc: int, counter: Counter, port: int) -> None:
    if loop == "trio":
        import trio

        async def trio_worker(c: Counter) -> None:
            stream = await trio.open_tcp_stream(HOST, port)
            async with stream:
                while not c.stop:
                    await stream.send_all(MESSAGE)
                    got = len(await stream.receive_some(65536))
                    while got < SIZE:
                        got += len(await stream.receive_some(65536))
                    c.tick()

        async def trio_main() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(conc):
                    nursery.start_soon(trio_worker, counter)

        trio.run(trio_main)
        return

    async def worker(c: Counter) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while not c.stop:
                writer.write(MESSAGE)
                await writer.drain()
                await reader.readexactly(SIZE)
                c.tick()
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(conc):
                tg.create_task(worker(counter))

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def _sync(op: str, conc: int, counter: Counter, port: int) -> None:
    import socket
    import threading

    import conpool

    lock = threading.Lock()

    def tick() -> None:
        with lock:
            counter.tick()

    def round_trip(send: Callable[[bytes], object], recv: Callable[[int], bytes]) -> None:
        send(MESSAGE)
        got = len(recv(65536))
        while got < SIZE:
            got += len(recv(65536))

    def raw() -> None:
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            while not counter.stop:
                round_trip(sock.sendall, sock.recv)
                tick()

    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=conc)) as pool:
        endpoint = conpool.Endpoint(HOST, port)

        def pooled() -> None:
            while not counter.stop:
                with pool.connection(endpoint) as conn:
                    round_trip(conn.send, conn.receive)
                tick()

        threads = [
            threading.Thread(target=raw if op == "sync-raw" else pooled) for _ in range(conc)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main(argv: list[str]) -> int:
    op, loop, conc, warmup, n, port = argv
    if op not in OPS:
        raise SystemExit(f"unknown operation {op!r} (one of {', '.join(OPS)})")
    counter = Counter(int(warmup), int(n))
    # Free a large block once, as every bench client does (see bench/cell.py).
    bytearray(1 << 20)
    if op == "yield":
        _yield(loop, int(conc), counter)
    elif op.startswith("sync-"):
        _sync(op, int(conc), counter, int(port))
    elif op == "raw":
        _raw(loop, int(conc), counter, int(port))
    else:
        _pool_op(op, loop, int(conc), counter, int(port))
    if counter.marks:
        raise SystemExit(f"stopped after {counter.n} operations, before the marks")
    import conpool

    print(f"conpool from {os.path.dirname(conpool.__file__)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
