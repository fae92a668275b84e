"""Redis commands (RESP) over pooled connections: PING, SET, GET and 100 concurrent PINGs.

python examples/redis_ping.py --port 6379 [--backend trio]
"""

from __future__ import annotations

import argparse

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import conpool


class RedisError(Exception):
    """The server answered ``-ERR ...``."""


# A reply: simple string, error, integer, bulk string (None when absent), or an array.
Reply = str | RedisError | int | bytes | None | list["Reply"]


async def read_reply(stream: BufferedByteReceiveStream) -> Reply:
    """Parse one RESP2 reply: its first byte says what follows."""
    line = await stream.receive_until(b"\r\n", 1 << 16)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode())  # returned, not raised: the stream is still in step
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await stream.receive_exactly(size + 2))[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [await read_reply(stream) for _ in range(count)]
    raise ValueError(f"not a RESP reply: {line!r}")


async def command(pool: conpool.Pool, endpoint: conpool.Endpoint, *args: str | bytes) -> Reply:
    """Send one command on a pooled connection and return its reply.

    :raises RedisError: the server refused the command.
    """
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    request = f"*{len(parts)}\r\n".encode() + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
    )
    async with pool.connection(endpoint) as conn:
        await conn.send(request)
        # One reply answers one command, so nothing is left in the buffer afterwards
        # and the connection goes back to the pool ready for the next command.
        reply = await read_reply(BufferedByteReceiveStream(conn))
    if isinstance(reply, RedisError):
        raise reply
    return reply


async def main(host: str, port: int) -> None:
    endpoint = conpool.Endpoint(host, port)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=5)) as pool:
        print("PING ->", await command(pool, endpoint, "PING"))
        print("SET greeting ->", await command(pool, endpoint, "SET", "greeting", "hello"))
        print("GET greeting ->", await command(pool, endpoint, "GET", "greeting"))
        replies: list[Reply] = []

        async def ping() -> None:
            replies.append(await command(pool, endpoint, "PING"))

        async with anyio.create_task_group() as tg:  # 100 PINGs over at most 5 connections
            for _ in range(100):
                tg.start_soon(ping)
        print(f"100 concurrent PINGs -> {replies.count('PONG')} PONG")
        s = pool.stats().endpoints[endpoint]
    print(f"{endpoint}: created={s.created} reused={s.reused} closed={s.closed}")
    for ip, a in s.addresses.items():
        print(f"  {ip}: created={a.created} idle={a.idle} failures={a.failures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="PING, SET and GET over pooled connections.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    args = parser.parse_args()
    uvloop = args.backend == "uvloop"  # uvloop is asyncio with a faster event loop
    backend, options = ("asyncio", {"use_uvloop": True}) if uvloop else (args.backend, {})
    anyio.run(main, args.host, args.port, backend=backend, backend_options=options)
