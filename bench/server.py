"""The echo server: ``python -m bench.server [--cpu N] [--max-seconds S]``.

An asyncio Protocol that writes back whatever it reads, on uvloop when it is
installed (the stock loop otherwise), in its own process pinned to its own
core, so that the clients measure themselves and not the server.  It prints
``PORT <n>`` once it listens, and stops on SIGTERM, when its stdin closes
(the runner died), or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys

from bench.cell import pin


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


def stop_signal(max_seconds: float) -> asyncio.Future[None]:
    """A future that completes on SIGTERM or SIGINT, after ``max_seconds``,
    or when stdin (a pipe from the process that started this one) reaches
    EOF: every way a benchmark server is told, or left, to stop."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, done)
    loop.add_signal_handler(signal.SIGINT, done)
    loop.call_later(max_seconds, done)

    stdin = sys.stdin.fileno()

    def stdin_readable() -> None:
        if not os.read(stdin, 4096):  # EOF: the runner is gone
            loop.remove_reader(stdin)
            done()

    # Only a pipe from the runner is watched (a file or a terminal is not).
    if stat.S_ISFIFO(os.fstat(stdin).st_mode):
        loop.add_reader(stdin, stdin_readable)
    return stop


async def serve(host: str, port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = stop_signal(max_seconds)
    server = await loop.create_server(Echo, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    try:
        await stop
    finally:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    pin(args.cpu)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.max_seconds))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
