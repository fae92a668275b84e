"""Security properties: TLS verified by default, connections never cross from
one TLS identity (server name, context) or from plaintext to another key, no
payload bytes in anything the pool or its tools write, and a bound on every
resource.

Complements ``test_tls.py`` (handshake failures, SNI, the basic plaintext/TLS
split) and ``test_trace.py`` (payload bytes in trace events and trace files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
from anyio.streams.tls import TLSAttribute

import conpool
from conpool._pool import MAX_ENDPOINTS
from conpool._resolve import ResolutionCache
from faultproxy import FaultProxy
from helpers_pool import (
    MisbehavingServer,
    check_consistent,
    check_quiet,
    echo,
    eventually,
    fd_baseline,
    fds_back_to,
)
from servers import LOOPBACK, EchoServer, TLSEchoServer

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------
# TLS verification is on by default


def test_default_tls_context_verifies_certificates_and_names() -> None:
    ctx = conpool.TLS().ssl_context
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["pool.test", "127.0.0.1"])
async def test_default_tls_rejects_an_untrusted_server(
    tls_echo_server: TLSEchoServer, host: str
) -> None:
    # The certificate names both pool.test and 127.0.0.1: only the CA is wrong.
    ep = conpool.Endpoint(host, tls_echo_server.port, tls=conpool.TLS())
    resolver = conpool.StaticResolver({"pool.test": [LOOPBACK]})
    tracer = conpool.Tracer()
    config = conpool.Config(connect_retries=2, retry_backoff=0.01)
    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.idle) == (0, 0)
    exc = info.value
    assert isinstance(exc.errors[0], ssl.SSLCertVerificationError)
    assert "certificate verification failed" in str(exc).split("\n")[0]
    assert exc.attempts == 1  # no amount of retrying makes a certificate trusted
    assert [e.kind for e in tracer.events() if e.kind.startswith("tls.")] == ["tls.failed"]
    await eventually(lambda: tls_echo_server.handshake_failures == 1)
    # Same server, same endpoint shape, but trusting its CA: accepted.
    trusted = conpool.Endpoint(
        host, tls_echo_server.port, tls=conpool.TLS(tls_echo_server.client_context())
    )
    async with conpool.Pool(resolver=resolver) as pool, pool.connection(trusted) as conn:
        assert await echo(conn, b"trusted") == b"trusted"


# --------------------------------------------------------------------------
# A connection is only ever handed out for the key it was made for


@pytest.mark.anyio
async def test_connections_never_cross_tls_identities() -> None:
    with TLSEchoServer(names=("a.test", "b.test")) as server:
        ctx = server.client_context()
        other_ctx = server.client_context()  # equal settings, another object
        port = server.port
        ep_a = conpool.Endpoint(LOOPBACK, port, tls=conpool.TLS(ctx, server_name="a.test"))
        ep_b = conpool.Endpoint(LOOPBACK, port, tls=conpool.TLS(ctx, server_name="b.test"))
        ep_ctx = conpool.Endpoint(LOOPBACK, port, tls=conpool.TLS(other_ctx, server_name="a.test"))
        ep_plain = conpool.Endpoint(LOOPBACK, port)
        endpoints = [ep_a, ep_b, ep_ctx, ep_plain]
        assert len(set(endpoints)) == 4
        expected = {
            ep_a: ("a.test", ctx),
            ep_b: ("b.test", ctx),
            ep_ctx: ("a.test", other_ctx),
        }
        tracer = conpool.Tracer()
        owner: dict[int, conpool.Endpoint] = {}  # connection id -> the key it was made for
        rng = random.Random(1)
        config = conpool.Config(max_connections_per_endpoint=3)
        async with conpool.Pool(config, tracer=tracer) as pool:
            held: list[conpool.Connection] = []
            for _ in range(60):
                ep = rng.choice(endpoints)
                if len(held) < 6 and rng.random() < 0.6 and not any(c.endpoint == ep for c in held):
                    conn = await pool.acquire(ep)
                    assert conn.endpoint == ep
                    assert owner.setdefault(conn.id, ep) == ep, f"#{conn.id} made for another key"
                    obj = conn.extra(TLSAttribute.ssl_object, None)
                    if ep is ep_plain:
                        assert obj is None
                    else:
                        assert obj is not None
                        name, context = expected[ep]
                        assert obj.server_hostname == name
                        assert obj.context is context
                        assert (
                            await echo(conn, b"for %s" % name.encode()) == b"for %s" % name.encode()
                        )
                    held.append(conn)
                elif held:
                    await pool.release(held.pop(rng.randrange(len(held))))
            for conn in held:
                await pool.release(conn)
            stats = check_quiet(pool)
            events = tracer.events()
        # Every connection served only the key it was made for, as the
        # trace tells it too (connect.complete and conn.reuse carry the key).
        for e in events:
            if e.kind in ("connect.complete", "conn.reuse"):
                assert str(owner[e.conn_id]) == e.endpoint
        for ep in endpoints:
            made = sorted(i for i, o in owner.items() if o == ep)
            assert made and stats.endpoints[ep].created == len(made), (ep, made)
        assert sum(s.reused for s in stats.endpoints.values()) > 0  # reuse did happen
        # The server saw each TLS connection's own name, and nothing else.
        tls_made = [o for o in owner.values() if o is not ep_plain]
        await eventually(lambda: len(server.server_names) == len(tls_made))
        assert sorted(map(str, server.server_names)) == sorted(expected[o][0] for o in tls_made)


@pytest.mark.anyio
async def test_plaintext_and_tls_to_one_port_keep_separate_pools(
    tls_echo_server: TLSEchoServer,
) -> None:
    # Through a proxy, so that a plaintext connection can be made to the same
    # host:port: the proxy counts what crosses it.
    with FaultProxy(tls_echo_server.address) as proxy:
        tls = conpool.Endpoint(
            proxy.host,
            proxy.port,
            tls=conpool.TLS(tls_echo_server.client_context(), server_name="localhost"),
        )
        plain = conpool.Endpoint(proxy.host, proxy.port)
        config = conpool.Config(max_connections_per_endpoint=2, max_connections=2)
        async with conpool.Pool(config) as pool:
            async with pool.connection(tls) as a, pool.connection(tls) as b:
                assert await echo(a, b"a") == b"a" and await echo(b, b"b") == b"b"
                tls_ids = {a.id, b.id}
            plain_ids = set()
            for _ in range(3):
                async with pool.connection(plain) as conn:
                    assert conn.id not in tls_ids
                    assert conn.extra(TLSAttribute.ssl_object, None) is None
                    plain_ids.add(conn.id)
            # The plaintext idle one was reused; the global limit evicted a
            # TLS idle connection to make room rather than lend it out.
            assert len(plain_ids) == 1
            async with pool.connection(tls) as conn:
                assert conn.id in tls_ids and await echo(conn, b"c") == b"c"
            s = check_quiet(pool)
            assert (s.endpoints[tls].created, s.endpoints[plain].created) == (2, 1)
            assert (s.endpoints[tls].closed, s.endpoints[tls].idle) == (1, 1)
            assert s.endpoints[plain].reused == 2
            assert s.endpoints[tls].addresses[LOOPBACK].created == 2
        assert proxy.errors == []


# --------------------------------------------------------------------------
# No payload bytes in events, logs, metrics, reprs or error texts


def _contains(text: str, marker: str) -> bool:
    return marker in text or marker.encode().hex() in text


@pytest.mark.anyio
async def test_no_payload_bytes_in_logs_metrics_reprs_or_errors(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"conpool-secret-{uuid.uuid4().hex}"
    payload = marker.encode()
    tracer = conpool.Tracer()
    texts: list[str] = []
    with (
        FaultProxy(echo_server.address) as proxy,
        MisbehavingServer("garbage", payload=payload * 4) as garbage,
    ):
        plain = conpool.Endpoint(proxy.host, proxy.port)
        not_tls = conpool.Endpoint(LOOPBACK, garbage.port, tls=conpool.TLS(server_name="localhost"))
        caplog.set_level(logging.DEBUG)
        config = conpool.Config(connect_retries=1, retry_backoff=0.01)
        async with conpool.Pool(config, tracer=tracer) as pool:
            pool.add_hook("*", conpool.LogExporter())
            for _ in range(3):
                async with pool.connection(plain) as conn:
                    assert await echo(conn, payload) == payload
                    texts.append(repr(conn))
            # Cut mid-exchange: the partial payload is in flight when it breaks.
            proxy.set_mode("reset_after", after=len(payload) // 2)
            with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)) as cut:
                async with pool.connection(plain) as conn:
                    await echo(conn, payload)
            texts.append(repr(cut.value))
            # A "TLS" server that answers with the payload.
            with pytest.raises(conpool.ConnectError) as bad:
                await pool.acquire(not_tls)
            texts.extend([str(bad.value), repr(bad.value), *map(str, bad.value.errors)])
            texts.extend([repr(pool), repr(pool.stats()), conpool.prometheus_text(pool.stats())])
            check_consistent(pool)
    events = tracer.events()
    assert {"connect.complete", "conn.reuse", "conn.close", "tls.failed"} <= {
        e.kind for e in events
    }
    texts.extend(repr(e) for e in events)
    texts.extend(r.getMessage() for r in caplog.records)
    texts.extend(caplog.text.splitlines())
    assert sum(1 for r in caplog.records if r.name == "conpool") >= len(events)
    leaks = [t for t in texts if _contains(t, marker)]
    assert leaks == []


class _MarkerHTTPServer:
    """A keep-alive HTTP/1.1 server that puts *marker* in every response:
    mostly ``200`` with the marker in a header and the body; every 7th
    response is ``500`` with the marker as the reason phrase, every 11th is
    the marker alone (not HTTP at all)."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self._listener.settimeout(0.02)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)

    def _response(self) -> bytes:
        with self._lock:
            self._n += 1
            n = self._n
        body = self.marker
        if n % 11 == 0:
            return body + b"\r\n\r\n"
        if n % 7 == 0:
            return b"HTTP/1.1 500 " + body + b"\r\nContent-Length: 0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nX-Echo: " + body + b"\r\nContent-Length: %d\r\n\r\n"
        return head % len(body) + body

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        with sock, contextlib.suppress(OSError):
            sock.settimeout(0.02)
            while not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _request, _, buf = buf.partition(b"\r\n\r\n")
                    sock.sendall(self._response())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._accept.start()
        try:
            yield
        finally:
            self._stop.set()
            self._accept.join(5)
            self._listener.close()
            for thread in self._threads:
                thread.join(5)


def test_no_payload_bytes_in_the_stress_report(tmp_path: Path) -> None:
    """``conpool stress --target`` against a server whose every answer
    carries a marker: neither the HTML report, nor the JSON results, nor the
    terminal output may quote it, for good answers or bad ones."""
    marker = f"conpool-secret-{uuid.uuid4().hex}"
    server = _MarkerHTTPServer(marker.encode())
    html, results = tmp_path / "report.html", tmp_path / "results.json"
    with server.running():
        proc = subprocess.run(
            [sys.executable, "-m", "conpool", "stress", "--target", f"{LOOPBACK}:{server.port}",
             "--protocol", "http", "--scenarios", "plain", "--duration", "0.3",
             "--concurrency", "4", "--out", str(html), "--json", str(results)],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads(results.read_text())
    (scenario,) = data["scenarios"]
    assert scenario["requests"]["ok"] > 10
    assert scenario["errors"], "the bad answers must show up as errors"
    outputs = {
        "report.html": html.read_text(),
        "results.json": results.read_text(),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }
    leaks = {name: text.count(marker) for name, text in outputs.items() if _contains(text, marker)}
    assert leaks == {}, [e["message"] for e in scenario["errors"]]


# --------------------------------------------------------------------------
# Every resource has a bound


def test_trace_buffer_is_bounded() -> None:
    tracer = conpool.Tracer(capacity=64)
    for i in range(640):
        tracer.emit("bound.test", conn_id=i, detail="x" * 10)
        assert len(tracer) <= 64
    assert len(tracer._ts) == len(tracer._kind) == 64  # the storage itself never grew
    assert len(tracer.events()) == 64 and tracer.dropped == 640 - 64
    assert [e.conn_id for e in tracer.events()] == list(range(576, 640))


@pytest.mark.anyio
async def test_waiters_are_bounded_by_max_waiters(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=2, max_waiters=10)
    async with conpool.Pool(config) as pool:
        held = [await pool.acquire(ep) for _ in range(2)]
        rejected: list[float] = []
        served = 0

        async def task() -> None:
            nonlocal served
            start = time.monotonic()
            try:
                async with pool.connection(ep) as conn:
                    assert await echo(conn, b"w") == b"w"
                    served += 1
            except conpool.PoolTimeout as exc:
                assert "max_waiters=10" in str(exc)
                rejected.append(time.monotonic() - start)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(task)
            await eventually(lambda: len(rejected) == 90, what="90 rejected")
            assert pool.stats().endpoints[ep].waiting == 10
            assert max(rejected) < 0.5  # at once, not after a wait
            for conn in held:
                await pool.release(conn)
        assert served == 10
        s = check_quiet(pool).endpoints[ep]
        assert s.created == 2


@pytest.mark.anyio
async def test_connections_are_bounded_under_500_tasks() -> None:
    with EchoServer() as one, EchoServer() as two:
        eps = [conpool.Endpoint(one.host, one.port), conpool.Endpoint(two.host, two.port)]
        config = conpool.Config(max_connections_per_endpoint=5, max_connections=8)
        peak = {"total": 0, **{str(ep): 0 for ep in eps}}
        base = await fd_baseline()
        async with conpool.Pool(config) as pool:

            def sample(_event: conpool.Event) -> None:
                s = pool.stats()
                peak["total"] = max(peak["total"], s.active + s.idle + s.pending)
                for ep, e in s.endpoints.items():
                    peak[str(ep)] = max(peak[str(ep)], e.active + e.idle + e.pending)

            pool.add_hook("connect.*", sample)
            pool.add_hook("conn.reuse", sample)

            async def task(i: int) -> None:
                async with pool.connection(eps[i % 2]) as conn:
                    assert await echo(conn, b"%d" % i) == b"%d" % i
                    await anyio.sleep(0.001)

            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(task, i)
            s = check_quiet(pool)
        await fds_back_to(base)
    assert peak["total"] == 8 and all(peak[str(ep)] <= 5 for ep in eps), peak
    # Server side, per endpoint.  (The two servers' maxima may fall at
    # different moments, and a connection the pool closed to make room is
    # seen closed by its server a little later, so their sum is no bound.)
    assert one.max_concurrent <= 5 and two.max_concurrent <= 5
    assert sum(e.created for e in s.endpoints.values()) < 500  # reuse, not a dial per task


class _CountingResolver:
    """Every name resolves to 127.0.0.1 (or fails, with *fail*); counts calls."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    async def resolve(self, host: str) -> Sequence[conpool.ResolvedAddress]:
        self.calls += 1
        if self.fail:
            raise OSError(f"{host} does not resolve")
        return [conpool.ResolvedAddress(LOOPBACK, None)]


@pytest.mark.anyio
async def test_dns_cache_is_bounded() -> None:
    resolver = _CountingResolver()
    cache = ResolutionCache(resolver, max_names=10_000)
    names = [f"n{i}.test" for i in range(10_050)]
    for i, name in enumerate(names):
        assert await cache.resolve(name, 0.0) == ((LOOPBACK,), False)
        assert len(cache._entries) <= 10_000, i
    assert len(cache._entries) == 10_000 and resolver.calls == 10_050
    # The oldest names were forgotten, the newest are served without a lookup.
    assert cache.peek(names[0], 0.0) is None and cache.peek(names[49], 0.0) is None
    assert cache.peek(names[50], 0.0) == (LOOPBACK,)
    assert await cache.resolve(names[-1], 0.0) == ((LOOPBACK,), False)
    assert resolver.calls == 10_050


@pytest.mark.anyio
async def test_the_pools_dns_cache_is_bounded_for_names_that_fail() -> None:
    # Names that do not resolve take a cache entry too (their in-flight
    # lookup is shared): a pool asked for ever new bad names stays bounded.
    resolver = _CountingResolver(fail=True)
    async with conpool.Pool(resolver=resolver) as pool:
        for i in range(10_050):
            with pytest.raises(conpool.ResolveError):
                await pool.acquire(conpool.Endpoint(f"bad{i}.test", 80))
        assert len(pool._names._entries) <= pool._names.max_names == 10_000
    assert resolver.calls == 10_050


@pytest.mark.anyio
async def test_the_endpoints_a_pool_remembers_are_bounded() -> None:
    # A pool asked for ever new endpoints forgets those with nothing open
    # (oldest first) once it knows more than MAX_ENDPOINTS, so its state and
    # stats() stay bounded; endpoints with connections are kept.
    resolver = _CountingResolver(fail=True)
    config = conpool.Config(sweep_interval=0.01)
    async with conpool.Pool(config, resolver=resolver) as pool:
        with EchoServer() as server:
            kept = conpool.Endpoint(LOOPBACK, server.port)
            conn = await pool.acquire(kept)
            for i in range(MAX_ENDPOINTS + 50):
                with pytest.raises(conpool.ResolveError):
                    await pool.acquire(conpool.Endpoint(f"gone{i}.test", 80))
            await eventually(lambda: len(pool.stats().endpoints) <= MAX_ENDPOINTS)
            endpoints = pool.stats().endpoints
            assert kept in endpoints and endpoints[kept].active == 1
            assert conpool.Endpoint("gone0.test", 80) not in endpoints
            assert len(pool._waits) + len(pool._connects) <= 2 * MAX_ENDPOINTS
            await pool.release(conn)
