"""httpx on conpool: four addresses behind one name, requests spread over all four.

python examples/httpx_balanced.py [-n 400] [-c 64] [--backend asyncio|uvloop|trio]

The example starts its own small HTTP/1.1 servers on 127.0.0.11-14 (one port,
keep-alive), names them ``pool.test`` with a StaticResolver, sends ``-n``
GET requests from ``-c`` tasks through ``httpx.AsyncClient`` on
``conpool.httpx.AsyncTransport``, and prints the spread per address as the
pool counts it (``transport.pool.stats()``) and as the servers saw it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket

import anyio
import anyio.abc
import httpx

import conpool
import conpool.httpx

ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")


def free_port() -> int:
    """A port free on every address (the example's servers share it)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((ADDRESSES[0], 0))
            port: int = probe.getsockname()[1]
        try:
            for ip in ADDRESSES[1:]:
                with socket.socket() as other:
                    other.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on all of 127.0.0.11-14")


async def serve(stream: anyio.abc.SocketStream, seen: collections.Counter[str]) -> None:
    """Answer every request on one keep-alive connection with the address it came to."""
    here = stream.extra(anyio.abc.SocketAttribute.local_address)[0]
    body = f"served by {here}\n".encode()
    buffer = b""
    async with stream:
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            _, _, buffer = buffer.partition(b"\r\n\r\n")  # GETs carry no body
            seen[here] += 1
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            await stream.send(head + body)


async def main(n: int, concurrency: int) -> None:
    port = free_port()
    seen: collections.Counter[str] = collections.Counter()
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as servers:
        for ip in ADDRESSES:
            listener = await anyio.create_tcp_listener(local_host=ip, local_port=port)
            await stack.enter_async_context(listener)  # closed on the way out
            servers.start_soon(listener.serve, lambda s: serve(s, seen))

        resolver = conpool.StaticResolver({"pool.test": list(ADDRESSES)})
        transport = conpool.httpx.AsyncTransport(resolver=resolver)
        url = f"http://pool.test:{port}/"
        async with httpx.AsyncClient(transport=transport) as client:
            queue = list(range(n))

            async def worker() -> None:
                while queue:
                    queue.pop()
                    response = await client.get(url)
                    response.raise_for_status()

            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)

            stats = transport.pool.stats()
            (endpoint_stats,) = stats.endpoints.values()
            print(f"{n} requests from {concurrency} tasks to {url}")
            print(
                f"connections: created={endpoint_stats.created} "
                f"reused={endpoint_stats.reused} idle={endpoint_stats.idle}"
            )
            for ip in ADDRESSES:
                a = endpoint_stats.addresses[ip]
                share = 100 * seen[ip] / max(n, 1)
                print(
                    f"  {ip}: {seen[ip]:4d} requests ({share:4.1f} %) "
                    f"on {a.created} connections, {a.idle} idle now"
                )
        servers.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="requests (default 400)")
    parser.add_argument("-c", type=int, default=64, help="concurrent tasks (default 64)")
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    args = parser.parse_args()
    if args.n < 1 or args.c < 1:
        parser.error("-n and -c must be positive")
    backend, options = args.backend, {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}
    anyio.run(main, args.n, args.c, backend=backend, backend_options=options)
