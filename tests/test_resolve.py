"""Resolvers and the resolution cache: what each resolver answers, how the
pool shares and refreshes answers, and how a name that does not resolve reads.

DNS answers come from a real dnsmasq on loopback (the ``dnsmasq`` fixture, or
one started here with another ``local-ttl``); connections go to the threaded
echo server.  Nothing here leaves the machine: :class:`conpool.SystemResolver`
is only asked about ``localhost``, which ``/etc/hosts`` answers.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

import conpool
from conpool._resolve import ResolutionCache
from helpers_pool import check_quiet, echo
from servers import POOL_ADDRESSES, DnsmasqServer, EchoServer

pytestmark = pytest.mark.anyio


def dns_resolver(server: DnsmasqServer, **kwargs: float) -> conpool.DNSResolver:
    """A :class:`conpool.DNSResolver` that asks only *server*."""
    return conpool.DNSResolver([(server.host, server.port)], **kwargs)  # type: ignore[arg-type]


class CountingResolver:
    """Wraps a resolver: counts lookups, and stalls each one for *delay* seconds
    so that concurrent callers overlap."""

    def __init__(self, inner: conpool.Resolver, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls = 0
        self.hosts: list[str] = []

    async def resolve(self, host: str) -> Sequence[conpool.ResolvedAddress]:
        self.calls += 1
        self.hosts.append(host)
        if self.delay:
            await anyio.sleep(self.delay)
        return await self.inner.resolve(host)


class FailingResolver:
    """Every lookup fails with *message*; counts the attempts."""

    def __init__(self, message: str = "lookup failed on purpose") -> None:
        self.message = message
        self.calls = 0

    async def resolve(self, host: str) -> Sequence[conpool.ResolvedAddress]:
        self.calls += 1
        raise OSError(self.message)


# --------------------------------------------------------------------------
# StaticResolver


async def test_static_resolver_answers_from_its_table() -> None:
    resolver = conpool.StaticResolver(
        {"Pool.Test.": ["127.0.0.11", "127.0.0.12"], "six.test": ["0:0:0:0:0:0:0:1"]}
    )
    assert isinstance(resolver, conpool.Resolver)
    # Names match case-insensitively and without the trailing dot, either side.
    for host in ("pool.test", "POOL.TEST", "pool.test."):
        assert list(await resolver.resolve(host)) == [
            conpool.ResolvedAddress("127.0.0.11", None),
            conpool.ResolvedAddress("127.0.0.12", None),
        ]
    # Addresses are normalised to their canonical text, the key of the per-address stats.
    assert [a.ip for a in await resolver.resolve("six.test")] == ["::1"]
    with pytest.raises(OSError, match=r"'other\.test' is not in the static table"):
        await resolver.resolve("other.test")
    assert "pool.test" in repr(resolver)


@pytest.mark.parametrize(
    ("table", "error", "match"),
    [
        (["127.0.0.1"], TypeError, "table must be a mapping"),
        ({"": ["127.0.0.1"]}, ValueError, "names must be non-empty strings"),
        ({1: ["127.0.0.1"]}, ValueError, "names must be non-empty strings"),
        ({"a.test": "127.0.0.1"}, TypeError, r"table\['a.test'\] must be a list of addresses"),
        ({"a.test": 17}, TypeError, r"table\['a.test'\] must be a list of addresses"),
        ({"a.test": ["127.0.0.1", "pool.test"]}, ValueError, "'pool.test' is not an IP address"),
        ({"a.test": ["127.0.0.256"]}, ValueError, "'127.0.0.256' is not an IP address"),
        ({"a.test": ["[::1]"]}, ValueError, r"'\[::1\]' is not an IP address"),
    ],
)
def test_static_resolver_rejects_a_bad_table(
    table: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        conpool.StaticResolver(table)  # type: ignore[arg-type]


async def test_static_resolver_name_with_no_address_does_not_resolve() -> None:
    resolver = conpool.StaticResolver({"empty.test": []})
    with pytest.raises(OSError, match="not in the static table"):
        await resolver.resolve("empty.test")


# --------------------------------------------------------------------------
# SystemResolver


async def test_system_resolver_resolves_localhost(echo_server: EchoServer) -> None:
    resolver = conpool.SystemResolver(refresh=7)
    answer = list(await resolver.resolve("localhost"))
    assert conpool.ResolvedAddress("127.0.0.1", 7.0) in answer
    assert len({a.ip for a in answer}) == len(answer)  # one entry per address
    v4 = list(await conpool.SystemResolver(family=socket.AF_INET).resolve("localhost"))
    assert [a.ip for a in v4] == ["127.0.0.1"]
    assert repr(resolver) == "SystemResolver(refresh=7.0)"

    # And through the pool (the default resolver), to the echo server on 127.0.0.1.
    endpoint = conpool.Endpoint("localhost", echo_server.port)
    async with conpool.Pool() as pool:
        assert isinstance(pool.resolver, conpool.SystemResolver)
        async with pool.connection(endpoint) as conn:
            assert await echo(conn, b"hello") == b"hello"
            assert conn.address == ("127.0.0.1", echo_server.port)
        stats = check_quiet(pool).endpoints[endpoint]
    assert stats.addresses["127.0.0.1"].created == 1
    assert stats.connect_failures == 0


async def test_system_resolver_refresh_interval_is_the_ttl(echo_server: EchoServer) -> None:
    counting = CountingResolver(conpool.SystemResolver(refresh=0.3))
    endpoint = conpool.Endpoint("localhost", echo_server.port)
    async with conpool.Pool(conpool.Config(sweep_interval=10), resolver=counting) as pool:
        for _ in range(3):  # each acquire dials (the connection is closed), none looks up
            async with pool.connection(endpoint) as conn:
                await conn.aclose()
        assert counting.calls == 1
        await anyio.sleep(0.35)
        async with pool.connection(endpoint) as conn:
            assert await echo(conn, b"x") == b"x"
        assert counting.calls == 2
    assert counting.hosts == ["localhost", "localhost"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"refresh": 0}, ValueError, "refresh must be > 0"),
        ({"refresh": -1.5}, ValueError, "refresh must be > 0"),
        ({"refresh": math.nan}, ValueError, "refresh must be > 0"),
        ({"refresh": True}, TypeError, "refresh must be a number"),
        ({"refresh": "30"}, TypeError, "refresh must be a number"),
        ({"family": socket.AF_UNIX}, ValueError, "family must be AF_UNSPEC, AF_INET or AF_INET6"),
    ],
)
def test_system_resolver_validation(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        conpool.SystemResolver(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# DNSResolver against dnsmasq


async def test_dns_resolver_returns_every_a_record_with_its_ttl(dnsmasq: DnsmasqServer) -> None:
    resolver = dns_resolver(dnsmasq)
    answer = list(await resolver.resolve("pool.test"))
    # dnsmasq answers a hosts file in its own order; all four, each with TTL 1,
    # which the default clamp keeps as it is.
    assert sorted(a.ip for a in answer) == list(POOL_ADDRESSES)
    assert {a.ttl for a in answer} == {1.0}
    assert f"{dnsmasq.port}" in repr(resolver)


async def test_dns_resolver_asks_for_a_and_aaaa(dnsmasq: DnsmasqServer) -> None:
    dnsmasq.set_records({"dual.test": ["127.0.0.11", "::1"], "six.test": ["::1"]})
    both = await dns_resolver(dnsmasq).resolve("dual.test")
    assert sorted(a.ip for a in both) == ["127.0.0.11", "::1"]
    assert [a.ip for a in await dns_resolver(dnsmasq).resolve("six.test")] == ["::1"]

    v4_only = conpool.DNSResolver([(dnsmasq.host, dnsmasq.port)], ipv6=False)
    assert [a.ip for a in await v4_only.resolve("dual.test")] == ["127.0.0.11"]
    # No A record and AAAA not asked for: the name has no address.
    with pytest.raises(OSError, match=r"no A records for 'six\.test'"):
        await v4_only.resolve("six.test")


async def test_dns_resolver_nxdomain_is_an_oserror_with_the_servers_reason(
    dnsmasq: DnsmasqServer,
) -> None:
    with pytest.raises(OSError, match="does not exist") as info:
        await dns_resolver(dnsmasq).resolve("nope.test")
    assert "nope.test" in str(info.value)


async def test_dns_resolver_server_down_is_an_oserror(dnsmasq: DnsmasqServer) -> None:
    resolver = dns_resolver(dnsmasq, timeout=0.3)
    dnsmasq.stop()
    start = anyio.current_time()
    with pytest.raises(OSError) as info:
        await resolver.resolve("pool.test")
    assert str(info.value)  # some reason, never an empty message
    assert anyio.current_time() - start < 2.0  # bounded by the resolver's timeout


@pytest.mark.parametrize(
    ("local_ttl", "kwargs", "expected"),
    [
        (1, {}, 1.0),  # the defaults keep a 1 s TTL
        (5, {}, 5.0),
        (5, {"max_ttl": 2.0}, 2.0),  # clamped down
        (0, {}, 1.0),  # a zero TTL would make every acquire a lookup: min_ttl 1 s
        (0, {"min_ttl": 0.25}, 0.25),
        (1, {"min_ttl": 3.0, "max_ttl": 4.0}, 3.0),  # clamped up
        (600, {}, 300.0),  # the default max_ttl
    ],
)
async def test_dns_resolver_clamps_ttl(
    tmp_path: Path, local_ttl: int, kwargs: dict[str, float], expected: float
) -> None:
    with DnsmasqServer(tmp_path / "dnsmasq", local_ttl=local_ttl) as server:
        # The server really sends that TTL (dnspython's own view of the answer).
        assert server.resolver().resolve("pool.test", "A").rrset.ttl == local_ttl  # type: ignore[union-attr]
        answer = await dns_resolver(server, **kwargs).resolve("pool.test")
        assert [a.ttl for a in answer] == [expected] * 4

        # The cache keeps the answer exactly that long (the clock is given, not read).
        counting = CountingResolver(dns_resolver(server, **kwargs))
        cache = ResolutionCache(counting)
        ips, changed = await cache.resolve("pool.test", 1000.0)
        assert sorted(ips) == list(POOL_ADDRESSES) and not changed
        assert cache.peek("pool.test", 1000.0 + expected - 0.01) == ips
        assert cache.peek("pool.test", 1000.0 + expected) is None
        await cache.resolve("pool.test", 1000.0 + expected - 0.01)
        assert counting.calls == 1
        await cache.resolve("pool.test", 1000.0 + expected)
        assert counting.calls == 2


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ([], {"min_ttl": 0}, ValueError, "min_ttl must be > 0"),
        ([], {"max_ttl": -1}, ValueError, "max_ttl must be > 0"),
        ([], {"min_ttl": 5, "max_ttl": 2}, ValueError, "max_ttl must be >= min_ttl"),
        ([], {"timeout": 0}, ValueError, "timeout must be > 0"),
        ([], {"min_ttl": True}, TypeError, "min_ttl must be a number"),
        ([[]], {}, ValueError, "nameservers must not be empty"),
        ([[("dns.test", 53)]], {}, ValueError, r"each entry must be \(ip, port\)"),
        ([["127.0.0.1"]], {}, ValueError, r"each entry must be \(ip, port\)"),
        ([[("127.0.0.1", 0)]], {}, ValueError, "bad port"),
        ([[("127.0.0.1", 65536)]], {}, ValueError, "bad port"),
        ([[("127.0.0.1", "53")]], {}, ValueError, "bad port"),
        ([[("127.0.0.1", True)]], {}, ValueError, "bad port"),
    ],
)
def test_dns_resolver_validation(
    args: list[object], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        conpool.DNSResolver(*args, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# The cache, with the clock in the test's hands


class Scripted:
    """Answers with whatever ``answers`` holds next: a list of IPs, or an exception."""

    def __init__(self, *answers: list[str] | Exception, ttl: float | None = 1.0) -> None:
        self.answers = list(answers)
        self.ttl = ttl
        self.calls = 0

    async def resolve(self, host: str) -> Sequence[conpool.ResolvedAddress]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return [conpool.ResolvedAddress(ip, self.ttl) for ip in answer]


async def test_cache_serves_the_last_good_answer_until_the_stale_limit() -> None:
    down = OSError("server down")
    resolver = Scripted(["127.0.0.11", "127.0.0.12"], down, down, ["127.0.0.13"])
    cache = ResolutionCache(resolver, stale_limit=10.0)
    assert await cache.resolve("n.test", 0.0) == (("127.0.0.11", "127.0.0.12"), False)
    assert not cache.is_stale("n.test") and cache.stale_error("n.test") is None

    # Expired at 1.0; the refresh fails: the old answer is served, marked stale.
    assert await cache.resolve("n.test", 1.5) == (("127.0.0.11", "127.0.0.12"), False)
    assert cache.is_stale("n.test")
    assert cache.stale_error("n.test") is down
    # It does not ask again on every call...
    assert cache.peek("n.test", 1.6) == ("127.0.0.11", "127.0.0.12")
    assert resolver.calls == 2
    # ...and past expiry + stale_limit (1.0 + 10.0) the failure is the answer.
    with pytest.raises(OSError, match="server down"):
        await cache.resolve("n.test", 11.0)
    assert resolver.calls == 3
    # The server is back: a fresh answer, reported as a change.
    assert await cache.resolve("n.test", 12.0) == (("127.0.0.13",), True)
    assert not cache.is_stale("n.test") and cache.stale_error("n.test") is None


async def test_cache_rejects_an_empty_or_malformed_answer() -> None:
    cache = ResolutionCache(Scripted([]))
    with pytest.raises(OSError, match=r"returned no address for 'n\.test'"):
        await cache.resolve("n.test", 0.0)
    cache = ResolutionCache(Scripted(["not-an-ip"]))
    with pytest.raises(ValueError, match="not-an-ip"):
        await cache.resolve("n.test", 0.0)


async def test_cache_without_ttl_never_expires_and_dedupes() -> None:
    resolver = Scripted(["127.0.0.11", "127.0.0.11", "::0001"], ttl=None)
    cache = ResolutionCache(resolver)
    assert await cache.resolve("n.test", 0.0) == (("127.0.0.11", "::1"), False)
    assert cache.peek("n.test", 1e12) == ("127.0.0.11", "::1")
    assert resolver.calls == 1


async def test_cache_is_bounded() -> None:
    resolver = Scripted(*[["127.0.0.1"]] * 4, ttl=None)
    cache = ResolutionCache(resolver, max_names=2)
    for name in ("a.test", "b.test", "c.test"):
        await cache.resolve(name, 0.0)
    assert cache.peek("a.test", 0.0) is None  # the oldest name was forgotten
    assert cache.peek("b.test", 0.0) == cache.peek("c.test", 0.0) == ("127.0.0.1",)


# --------------------------------------------------------------------------
# The pool: shared lookups, refresh, errors


async def test_concurrent_first_acquires_share_one_lookup(echo_server: EchoServer) -> None:
    counting = CountingResolver(conpool.StaticResolver({"shared.test": ["127.0.0.1"]}), 0.1)
    endpoint = conpool.Endpoint("shared.test", echo_server.port)
    tracer = conpool.Tracer()
    config = conpool.Config(max_connections_per_endpoint=20)
    async with conpool.Pool(config, resolver=counting, tracer=tracer) as pool:
        conns: list[conpool.Connection] = []

        async def take() -> None:
            conns.append(await pool.acquire(endpoint))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(take)
        assert counting.calls == 1
        assert len(conns) == 20
        assert {conn.address for conn in conns} == {("127.0.0.1", echo_server.port)}
        for conn in conns:
            await pool.release(conn)
        stats = check_quiet(pool).endpoints[endpoint]
    assert (stats.created, stats.connect_failures) == (20, 0)
    kinds = [e.kind for e in tracer.events() if e.kind.startswith("resolve.")]
    # One lookup was made, and the trace shows it once; the other nineteen
    # acquires joined it.
    assert kinds == ["resolve.started"] + ["resolve.joined"] * 19 + ["resolve.complete"]


async def test_concurrent_acquires_share_one_failure() -> None:
    failing = FailingResolver("no such name, on purpose")
    slow = CountingResolver(failing, 0.1)
    endpoint = conpool.Endpoint("broken.test", 80)
    errors: list[BaseException] = []
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=10), resolver=slow) as pool:

        async def take() -> None:
            try:
                await pool.acquire(endpoint)
            except conpool.ResolveError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(take)
        stats = check_quiet(pool).endpoints[endpoint]
    assert failing.calls == 1
    assert len(errors) == 10
    assert all(str(e).splitlines()[0] == "no such name, on purpose" for e in errors)
    assert (stats.connect_failures, stats.created) == (10, 0)


async def test_one_answer_per_name_shared_by_its_endpoints(echo_server: EchoServer) -> None:
    # Two ports of one name are two endpoints (two pool keys), but the name
    # is looked up once.
    counting = CountingResolver(conpool.StaticResolver({"shared.test": ["127.0.0.1"]}))
    plain = conpool.Endpoint("shared.test", echo_server.port)
    other_port = conpool.Endpoint("shared.test", echo_server.port + 1)
    async with conpool.Pool(conpool.Config(connect_retries=0), resolver=counting) as pool:
        async with pool.connection(plain) as conn:
            assert await echo(conn, b"x") == b"x"
        with pytest.raises(conpool.ConnectError):  # nothing listens there; resolved from cache
            await pool.acquire(other_port)
        assert counting.calls == 1
        assert set(pool.stats().endpoints) == {plain, other_port}
        assert list(pool.stats().endpoints[other_port].addresses) == ["127.0.0.1"]


async def test_a_cancelled_lookup_does_not_break_those_sharing_it(
    echo_server: EchoServer,
) -> None:
    # The task that started the lookup is cancelled while others wait for its
    # answer: they must still get a connection (by looking up themselves),
    # not an internal error.
    counting = CountingResolver(conpool.StaticResolver({"shared.test": ["127.0.0.1"]}), 0.3)
    endpoint = conpool.Endpoint("shared.test", echo_server.port)
    async with conpool.Pool(resolver=counting) as pool:
        got: list[conpool.Connection] = []
        errors: list[BaseException] = []

        async def follower() -> None:
            try:
                got.append(await pool.acquire(endpoint))
            except Exception as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                leader_scope = anyio.CancelScope()
                tg.start_soon(_acquire_in, pool, endpoint, leader_scope)
                await anyio.sleep(0.05)  # the leader is inside resolve()
                tg.start_soon(follower)
                await anyio.sleep(0.05)  # the follower waits on the shared lookup
                assert counting.calls == 1
                leader_scope.cancel()
        assert errors == []
        assert len(got) == 1 and got[0].address == ("127.0.0.1", echo_server.port)
        await pool.release(got[0])
        check_quiet(pool)


async def _acquire_in(
    pool: conpool.Pool, endpoint: conpool.Endpoint, scope: anyio.CancelScope
) -> None:
    with scope:
        await pool.acquire(endpoint)
        raise AssertionError("the leader should have been cancelled while resolving")


async def test_unknown_name_raises_resolve_error_with_the_reason(dnsmasq: DnsmasqServer) -> None:
    endpoint = conpool.Endpoint("nope.test", 8080)
    tracer = conpool.Tracer()
    async with conpool.Pool(resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        with pytest.raises(conpool.ResolveError) as info:
            async with pool.connection(endpoint):
                raise AssertionError("unreachable")
        stats = check_quiet(pool).endpoints[endpoint]
    exc = info.value
    assert isinstance(exc, conpool.ConnectError) and isinstance(exc, OSError)
    assert exc.endpoint == endpoint
    assert exc.context == ("resolving nope.test", "connecting to nope.test:8080")
    first, *context = str(exc).splitlines()
    # The resolver's own reason, then the story, innermost first.
    assert "does not exist" in first and "nope.test" in first
    assert context == ["  resolving nope.test", "  connecting to nope.test:8080"]
    (cause,) = exc.errors
    assert isinstance(cause, OSError) and exc.__cause__ is cause
    assert exc.attempts == 1
    assert (stats.connect_failures, stats.created) == (1, 0)
    events = [(e.kind, e.endpoint) for e in tracer.events() if e.kind.startswith("resolve.")]
    assert events == [("resolve.started", "nope.test:8080"), ("resolve.failed", "nope.test:8080")]
    failed = next(e for e in tracer.events() if e.kind == "resolve.failed")
    assert "does not exist" in failed.detail


async def test_a_name_that_does_not_resolve_is_asked_again_next_time() -> None:
    failing = FailingResolver()
    endpoint = conpool.Endpoint("broken.test", 80)
    async with conpool.Pool(resolver=failing) as pool:
        for n in (1, 2):
            with pytest.raises(conpool.ResolveError, match="lookup failed on purpose"):
                await pool.acquire(endpoint)
            assert failing.calls == n  # failures are not cached
        check_quiet(pool)


async def test_ip_literals_never_use_the_resolver(echo_server: EchoServer) -> None:
    failing = FailingResolver()
    async with conpool.Pool(resolver=failing) as pool:
        async with pool.connection(conpool.Endpoint("127.0.0.1", echo_server.port)) as conn:
            assert await echo(conn, b"x") == b"x"
    assert failing.calls == 0


async def test_resolution_events_in_order(dnsmasq: DnsmasqServer, echo_server: EchoServer) -> None:
    dnsmasq.set_records({"echo.test": ["127.0.0.1"]})
    endpoint = conpool.Endpoint("echo.test", echo_server.port)
    tracer = conpool.Tracer()
    async with conpool.Pool(resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        async with pool.connection(endpoint) as conn:
            assert await echo(conn, b"x") == b"x"
    kinds = [e.kind for e in tracer.events() if e.kind.split(".")[0] in ("resolve", "connect")]
    assert kinds == ["resolve.started", "resolve.complete", "connect.started", "connect.complete"]
    complete = next(e for e in tracer.events() if e.kind == "resolve.complete")
    assert complete.detail == "127.0.0.1"
    assert complete.duration_ns is not None and complete.duration_ns > 0
