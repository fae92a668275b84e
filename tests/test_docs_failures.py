"""The failure table of docs/errors.md says what each failure looks like:
the exception class and the lines of its story.  Here each row that a test
can bring about on loopback is brought about, and every message fragment the
row quotes must be in the row and match the real exception's text (the
table's placeholders -- HOST, PORT, IP, N, T, ``...`` -- standing for any
value), so a change of wording in the code fails until the docs follow."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import conpool
from servers import EchoServer, TLSEchoServer, refused_port

pytestmark = pytest.mark.anyio

ERRORS_MD = Path(__file__).resolve().parent.parent / "docs" / "errors.md"

PLACEHOLDERS = {
    "HOST": r"[\w.\-\[\]:]+?",
    "PORT": r"\d+",
    "IP": r"[0-9a-f.:]+",
    "N+1": r"\d+",
    "N": r"\d+",
    "T": r"[\d.]+",
    "...": r".*?",
}
# A placeholder is a whole word (the T of "TLS" is not one).
_TOKEN = re.compile(
    r"\.\.\.|(?<![A-Za-z])(?:"
    + "|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True) if p != "...")
    + r")(?![A-Za-z])"
)


def rows() -> dict[str, str]:
    """The failure table: its first column to its second."""
    text = ERRORS_MD.read_text()
    out: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 2:
            out[cells[0]] = cells[1]
    return out


def pattern(fragment: str) -> re.Pattern[str]:
    """A quoted fragment as a regular expression, placeholders as wildcards."""
    parts, last = [], 0
    for m in _TOKEN.finditer(fragment):
        parts += [re.escape(fragment[last : m.start()]), PLACEHOLDERS[m.group()]]
        last = m.end()
    parts.append(re.escape(fragment[last:]))
    return re.compile("".join(parts))


def check(row: str, exc: BaseException, *fragments: str) -> None:
    cell = rows()[row]
    text = f"{type(exc).__name__}: {exc}"
    for fragment in fragments:
        assert f"`{fragment}" in cell or fragment in cell, (row, fragment)
        assert pattern(fragment).search(text), (fragment, text)


async def failure(action: Callable[[], Awaitable[object]]) -> BaseException:
    with pytest.raises(Exception) as info:
        with anyio.fail_after(30):
            await action()
    return info.value


async def test_every_attempt_failed() -> None:
    ep = conpool.Endpoint("pool.test", refused_port())
    config = conpool.Config(connect_retries=2, retry_backoff=0.001)
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    async with conpool.Pool(config, resolver=resolver) as pool:
        exc = await failure(lambda: pool.acquire(ep))
    assert isinstance(exc, conpool.ConnectError) and isinstance(exc, OSError)
    check(
        "every connect attempt failed",
        exc,
        "ConnectError",
        "connecting to tcp:IP:PORT",
        "connecting to HOST:PORT",
        "after N retry attempts (N+1 attempts in all)",
    )
    assert len(exc.errors) == 3
    async with conpool.Pool(conpool.Config(connect_retries=0), resolver=resolver) as pool:
        exc = await failure(lambda: pool.acquire(ep))
    assert (
        "without the `after ...` line" in rows()["no retries were configured (`connect_retries=0`)"]
    )
    assert "connecting to pool.test" in str(exc) and "after" not in str(exc)


async def test_the_name_does_not_resolve() -> None:
    ep = conpool.Endpoint("pool.test", 80)
    async with conpool.Pool(resolver=conpool.StaticResolver({})) as pool:
        exc = await failure(lambda: pool.acquire(ep))
    assert isinstance(exc, conpool.ResolveError)
    check(
        "the name does not resolve",
        exc,
        "ResolveError",
        "'pool.test' is not in the static table",
        "resolving HOST",
        "connecting to HOST:PORT",
    )


async def test_the_certificate_does_not_verify(tls_echo_server: TLSEchoServer) -> None:
    ep = conpool.Endpoint("127.0.0.1", tls_echo_server.port, tls=conpool.TLS())
    async with conpool.Pool() as pool:
        exc = await failure(lambda: pool.acquire(ep))
    check(
        "the certificate does not verify",
        exc,
        "ConnectError: TLS certificate verification failed: ...",
        "unable to get local issuer certificate",
    )
    assert "retry" not in str(exc)  # never retried


async def test_no_slot_in_time_and_a_full_queue(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.05, max_waiters=1)
    async with conpool.Pool(config) as pool:
        held = await pool.acquire(ep)
        exc = await failure(lambda: pool.acquire(ep))
        assert isinstance(exc, conpool.PoolTimeout) and isinstance(exc, TimeoutError)
        check(
            "no slot within `acquire_timeout`",
            exc,
            "PoolTimeout",
            "no connection to HOST:PORT became free within acquire_timeout=T s",
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(failure, lambda: pool.acquire(ep))  # the one waiter
            await anyio.sleep(0.01)
            exc = await failure(lambda: pool.acquire(ep))
        check(
            "`max_waiters` tasks already waiting",
            exc,
            "PoolTimeout",
            "no connection to HOST:PORT is free and max_waiters=N tasks are already waiting",
        )
        await pool.release(held)
        conn = await pool.acquire(ep)
        await pool.release(conn)
        exc = await failure(lambda: conn.send(b"x"))
        check(
            "`send`, `receive` or `send_eof` on a connection you released, "
            "while it is idle in the pool",
            exc,
            "RuntimeError: <conpool.Connection #N ...> was released to the pool and is idle "
            "there: acquire a connection again to use one",
        )
    exc = await failure(lambda: pool.acquire(ep))
    check("the pool is closed (or closes while you wait)", exc, "PoolClosed: the pool is closed")


def test_bad_arguments_and_urls() -> None:
    with pytest.raises(ValueError) as info:
        conpool.Endpoint("pool.test", 0)
    check(
        "bad arguments (`Endpoint`, `TLS`, `Config`, `Pool`, resolvers)",
        info.value,
        "port must be in 1..65535, got 0",
    )
    with pytest.raises(ValueError) as info:
        conpool.Endpoint.parse("https://example.com")
    check(
        "a URL where `host:port` was expected",
        info.value,
        "ValueError: invalid 'host:port' 'https://example.com': a URL is not accepted (scheme "
        "'https'); give the host and port, as in 'example.com:443', with tls=conpool.TLS()",
    )
