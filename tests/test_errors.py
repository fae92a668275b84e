"""Connect failures as the user sees them: the exact text, the attributes,
the traceback, pickling, on every backend and against real sockets."""

from __future__ import annotations

import errno
import pickle
import time
import traceback

import pytest

import conpool
from helpers_pool import Blackhole, check_quiet
from servers import refused_port

pytestmark = pytest.mark.anyio

FAST_RETRIES = {"retry_backoff": 0.005, "retry_backoff_max": 0.01}


async def refused(
    ep: conpool.Endpoint, retries: int = 3, resolver: conpool.Resolver | None = None
) -> conpool.ConnectError:
    config = conpool.Config(connect_retries=retries, **FAST_RETRIES)  # type: ignore[arg-type]
    async with conpool.Pool(config, resolver=resolver) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        s = check_quiet(pool)
        e = s.endpoints[ep]
        assert (e.created, e.connect_failures, e.idle) == (0, 1, 0)
        assert e.addresses["127.0.0.1"].failures == retries + 1
    return info.value


async def test_refused_with_retries_exact_text() -> None:
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)
    exc = await refused(ep)
    assert str(exc) == (
        "[Errno 111] Connection refused\n"
        f"  connecting to tcp:127.0.0.1:{port}\n"
        f"  connecting to 127.0.0.1:{port}\n"
        "  after 3 retry attempts (4 attempts in all)"
    )
    assert type(exc) is conpool.ConnectError
    assert isinstance(exc, OSError) and isinstance(exc, conpool.PoolError)
    assert exc.errno == errno.ECONNREFUSED
    assert exc.attempts == 4
    assert len(exc.errors) == 4
    assert all(isinstance(e, ConnectionRefusedError) for e in exc.errors)
    assert exc.endpoint == ep
    assert exc.context == (
        f"connecting to tcp:127.0.0.1:{port}",
        f"connecting to 127.0.0.1:{port}",
        "after 3 retry attempts (4 attempts in all)",
    )
    assert exc.__cause__ is exc.errors[-1]


async def test_refused_with_name_exact_text() -> None:
    port = refused_port()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    ep = conpool.Endpoint("pool.test", port)
    exc = await refused(ep, resolver=resolver)
    assert str(exc) == (
        "[Errno 111] Connection refused\n"
        f"  connecting to tcp:127.0.0.1:{port}\n"
        f"  connecting to pool.test:{port}\n"
        "  after 3 retry attempts (4 attempts in all)"
    )
    assert exc.endpoint == ep
    assert exc.attempts == 4


async def test_refused_traceback_tells_the_story() -> None:
    port = refused_port()
    exc = await refused(conpool.Endpoint("127.0.0.1", port))
    text = "".join(traceback.format_exception(exc))
    assert text.rstrip("\n").endswith(
        "conpool.ConnectError: [Errno 111] Connection refused\n"
        f"  connecting to tcp:127.0.0.1:{port}\n"
        f"  connecting to 127.0.0.1:{port}\n"
        "  after 3 retry attempts (4 attempts in all)"
    )
    # The underlying error is chained above it.
    assert "ConnectionRefusedError" in text
    assert "direct cause" in text
    only = "".join(traceback.format_exception_only(exc))
    assert only.startswith("conpool.ConnectError: [Errno 111] Connection refused\n")


async def test_no_retries_has_no_after_line() -> None:
    port = refused_port()
    exc = await refused(conpool.Endpoint("127.0.0.1", port), retries=0)
    assert str(exc) == (
        "[Errno 111] Connection refused\n"
        f"  connecting to tcp:127.0.0.1:{port}\n"
        f"  connecting to 127.0.0.1:{port}"
    )
    assert exc.attempts == 1
    assert "after" not in str(exc)


async def test_one_retry_is_singular() -> None:
    # "after 1 retry attempts" would read wrong; one retry is one attempt, two in all.
    port = refused_port()
    exc = await refused(conpool.Endpoint("127.0.0.1", port), retries=1)
    assert exc.attempts == 2
    assert str(exc).endswith("\n  after 1 retry attempt (2 attempts in all)")


async def test_retries_back_off() -> None:
    # Full-jitter backoff: the total wait is bounded by the sum of the caps.
    port = refused_port()
    config = conpool.Config(connect_retries=3, retry_backoff=0.01, retry_backoff_max=0.02)
    async with conpool.Pool(config) as pool:
        start = time.monotonic()
        with pytest.raises(conpool.ConnectError):
            await pool.acquire(conpool.Endpoint("127.0.0.1", port))
        assert time.monotonic() - start < 1.0


async def test_connect_timeout() -> None:
    with Blackhole() as hole:
        ep = conpool.Endpoint("127.0.0.1", hole.port)
        config = conpool.Config(connect_timeout=0.2, connect_retries=0)
        async with conpool.Pool(config) as pool:
            start = time.monotonic()
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
            elapsed = time.monotonic() - start
            check_quiet(pool)
        exc = info.value
        assert 0.19 <= elapsed < 1.5
        assert str(exc) == (
            "TCP connect timed out after 0.2 s\n"
            f"  connecting to tcp:127.0.0.1:{hole.port}\n"
            f"  connecting to 127.0.0.1:{hole.port}"
        )
        assert exc.attempts == 1
        assert isinstance(exc.errors[0], TimeoutError)
        assert isinstance(exc, OSError)


async def test_connect_timeout_with_retries() -> None:
    with Blackhole() as hole:
        ep = conpool.Endpoint("127.0.0.1", hole.port)
        config = conpool.Config(connect_timeout=0.1, connect_retries=2, **FAST_RETRIES)  # type: ignore[arg-type]
        async with conpool.Pool(config) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
        exc = info.value
        assert exc.attempts == 3
        assert str(exc).startswith("TCP connect timed out after 0.1 s\n")
        assert str(exc).endswith("\n  after 2 retry attempts (3 attempts in all)")


async def test_name_that_does_not_resolve() -> None:
    port = refused_port()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    ep = conpool.Endpoint("missing.test", port)
    config = conpool.Config(connect_retries=3, **FAST_RETRIES)  # type: ignore[arg-type]
    async with conpool.Pool(config, resolver=resolver) as pool:
        with pytest.raises(conpool.ResolveError) as info:
            await pool.acquire(ep)
        s = check_quiet(pool)
        assert s.endpoints[ep].connect_failures == 1
        assert s.endpoints[ep].created == 0
    exc = info.value
    assert isinstance(exc, conpool.ConnectError) and isinstance(exc, OSError)
    reason = "'missing.test' is not in the static table"
    assert str(exc) == f"{reason}\n  resolving missing.test\n  connecting to missing.test:{port}"
    assert "resolving missing.test" in exc.context
    assert exc.endpoint == ep
    assert exc.attempts == 1
    assert isinstance(exc.errors[0], OSError)
    assert str(exc.errors[0]) == reason


@pytest.mark.parametrize("kind", ["refused", "resolve"])
async def test_pickle_round_trip(kind: str) -> None:
    port = refused_port()
    exc: conpool.ConnectError
    if kind == "refused":
        exc = await refused(conpool.Endpoint("127.0.0.1", port))
    else:
        resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
        async with conpool.Pool(resolver=resolver) as pool:
            with pytest.raises(conpool.ResolveError) as info:
                await pool.acquire(conpool.Endpoint("nowhere.test", port))
        exc = info.value
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert copy.endpoint == exc.endpoint
    assert copy.context == exc.context
    assert copy.attempts == exc.attempts
    assert copy.errno == exc.errno
    assert [type(e) for e in copy.errors] == [type(e) for e in exc.errors]
    assert [str(e) for e in copy.errors] == [str(e) for e in exc.errors]


async def test_failed_connect_leaves_pool_usable() -> None:
    # A failure frees its slot: with a limit of 1, many failures in a row
    # still each get to try, and none waits forever.
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)
    config = conpool.Config(max_connections_per_endpoint=1, connect_retries=0, acquire_timeout=2.0)
    async with conpool.Pool(config) as pool:
        for _ in range(5):
            with pytest.raises(conpool.ConnectError):
                await pool.acquire(ep)
        s = check_quiet(pool)
        assert s.endpoints[ep].connect_failures == 5
