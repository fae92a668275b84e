"""100 echo round trips from 10 concurrent tasks through one conpool.Pool.

python examples/echo.py                      # starts its own echo server
python examples/echo.py --port 7 --backend trio
"""

from __future__ import annotations

import argparse

import anyio
from anyio.abc import SocketAttribute, SocketStream

import conpool


async def echo_handler(client: SocketStream) -> None:
    """The in-process server: send back whatever arrives until the client leaves."""
    async with client:
        async for chunk in client:
            await client.send(chunk)


async def worker(pool: conpool.Pool, endpoint: conpool.Endpoint, task: int, n: int) -> None:
    for i in range(n):
        message = f"task {task} request {i}\n".encode()
        # Leaving the block normally hands the connection back for the next request;
        # an exception closes it instead (its stream could be mid-message).
        async with pool.connection(endpoint) as conn:
            await conn.send(message)
            reply = b""
            while len(reply) < len(message):  # TCP may deliver the echo in pieces
                reply += await conn.receive()
        if reply != message:
            raise RuntimeError(f"sent {message!r}, got back {reply!r}")


async def run(endpoint: conpool.Endpoint, tasks: int = 10, each: int = 10) -> conpool.PoolStats:
    """Send ``tasks * each`` messages through a pool of at most 5 connections."""
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=5)) as pool:
        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(worker, pool, endpoint, task, each)
        return pool.stats()  # a frozen snapshot: it outlives the pool


async def main(host: str, port: int | None) -> None:
    if port is not None:
        stats = await run(conpool.Endpoint(host, port))
    else:  # no server given: serve one ourselves on a free port
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, echo_handler)
            port = listener.extra(SocketAttribute.local_port)
            stats = await run(conpool.Endpoint("127.0.0.1", port))
            server.cancel_scope.cancel()
    for endpoint, s in stats.endpoints.items():
        requests = s.created + s.reused  # every hand-out was a new or a reused connection
        print(f"{endpoint}: {requests} echoes, created={s.created} reused={s.reused}")
        for ip, a in s.addresses.items():
            print(f"  {ip}: created={a.created} idle={a.idle} failures={a.failures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Echo round trips through a conpool.Pool.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="an echo server's port (default: start one)")
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    args = parser.parse_args()
    uvloop = args.backend == "uvloop"  # uvloop is asyncio with a faster event loop
    backend, options = ("asyncio", {"use_uvloop": True}) if uvloop else (args.backend, {})
    anyio.run(main, args.host, args.port, backend=backend, backend_options=options)
