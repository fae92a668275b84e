"""A minimal HTTP/1.1 keep-alive client: h11 speaks the protocol, conpool keeps the sockets.

python examples/http11.py http://127.0.0.1:8080/ -n 20 -c 4 [--backend trio]
"""

from __future__ import annotations

import argparse
import collections
import urllib.parse

import anyio
import h11

import conpool

Headers = list[tuple[bytes, bytes]]


async def get(
    pool: conpool.Pool, endpoint: conpool.Endpoint, path: str
) -> tuple[int, Headers, bytes]:
    """GET ``path`` over a pooled connection; returns (status, headers, body).

    :raises h11.RemoteProtocolError: the server broke HTTP/1.1 (the connection is closed).
    """
    # h11 is I/O-free: it turns events into bytes and bytes into events. A pooled
    # connection may have carried earlier requests, but each exchange starts in a
    # fresh h11.Connection, which is why reuse must be decided at the end of this one.
    async with pool.connection(endpoint) as conn:
        http = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=path, headers=[("Host", str(endpoint))])
        await conn.send(http.send(request) + http.send(h11.EndOfMessage()))
        status, headers, body = 0, Headers(), b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await conn.receive()
                except anyio.EndOfStream:
                    data = b""  # h11 decides whether EOF here ends the response or is an error
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        # Both sides DONE means h11 could start_next_cycle(): the connection is clean
        # and kept alive. Otherwise (`Connection: close`, HTTP/1.0, a body read to EOF)
        # close it; the pool then frees the slot instead of reusing the socket.
        if not (http.our_state is h11.DONE and http.their_state is h11.DONE):
            await conn.aclose()
    return status, headers, body


async def main(url: str, n: int, concurrency: int) -> None:
    parts = urllib.parse.urlsplit(url)
    tls = conpool.TLS() if parts.scheme == "https" else None
    endpoint = conpool.Endpoint(parts.hostname or "", parts.port or (443 if tls else 80), tls=tls)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    statuses: collections.Counter[int] = collections.Counter()
    todo = iter(range(n))  # shared by the tasks: each takes the next request

    async def client(pool: conpool.Pool) -> None:
        for _ in todo:
            status, _headers, _body = await get(pool, endpoint, path)
            statuses[status] += 1

    async with conpool.Pool() as pool:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client, pool)
        s = pool.stats().endpoints[endpoint]
    for status, count in sorted(statuses.items()):
        print(f"status {status}: {count} responses")
    print(f"{endpoint}: created={s.created} reused={s.reused} closed={s.closed}")
    for ip, a in s.addresses.items():
        print(f"  {ip}: created={a.created} idle={a.idle} failures={a.failures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="GET a URL many times over pooled connections.")
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=20, help="requests in total")
    parser.add_argument("-c", type=int, default=4, help="concurrent tasks")
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    args = parser.parse_args()
    uvloop = args.backend == "uvloop"  # uvloop is asyncio with a faster event loop
    backend, options = ("asyncio", {"use_uvloop": True}) if uvloop else (args.backend, {})
    anyio.run(main, args.url, args.n, args.c, backend=backend, backend_options=options)
