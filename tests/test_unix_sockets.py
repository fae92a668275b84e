"""Unix domain socket endpoints, and the socket options and source address of
TCP ones, over real servers on every backend: nginx on ``listen unix:PATH``
(plain and TLS) and on TCP, a threaded echo server, and ``getsockopt`` on the
pooled connection's own socket."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

import conpool
from helpers_pool import check_consistent, check_quiet, echo, eventually
from servers import (
    EchoServer,
    NginxServer,
    TLSEchoServer,
    skip_or_fail,
    socket_directory,
    write_cert_files,
)

pytestmark = pytest.mark.anyio


async def http_get(conn: conpool.Connection, host: str = "localhost") -> bytes:
    """One keep-alive GET / on ``conn`` (nginx answers "ok\\n", sized)."""
    await conn.send(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok\n"):
        data += await conn.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


class UnixEchoServer:
    """A threaded echo server on a Unix socket; counts and closes connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.accepted = 0
        self.open: list[socket.socket] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.open.append(sock)
            thread = threading.Thread(target=self._echo, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _echo(self, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                sock.close()
                return
            sock.sendall(data)

    def close_all(self) -> None:
        for sock in self.open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(5)
        for thread in self.threads:
            thread.join(5)
        for sock in self.open:
            sock.close()


@pytest.fixture
def unix_echo() -> Iterator[UnixEchoServer]:
    with socket_directory() as directory:
        server = UnixEchoServer(directory / "echo.sock")
        try:
            yield server
        finally:
            server.stop()


# -- Unix domain sockets ------------------------------------------------------------


@pytest.mark.realserver
async def test_nginx_on_a_unix_socket_and_on_tcp_with_keep_alive() -> None:
    with socket_directory() as directory:
        path = directory / "nginx.sock"
        with NginxServer(directory / "nginx", unix_socket=path) as nginx:
            unix = conpool.Endpoint.unix(str(path))
            tcp = conpool.Endpoint(nginx.host, nginx.port)
            tracer = conpool.Tracer()
            async with conpool.Pool(tracer=tracer) as pool:
                for _ in range(5):
                    for ep in (unix, tcp):
                        async with pool.connection(ep) as conn:
                            assert await http_get(conn) == b"ok\n"
                s = check_quiet(pool)
                assert (s.endpoints[unix].created, s.endpoints[unix].reused) == (1, 4)
                assert (s.endpoints[tcp].created, s.endpoints[tcp].reused) == (1, 4)
                # The path is the endpoint's one address, in stats and traces.
                assert list(s.endpoints[unix].addresses) == [str(path)]
                assert s.endpoints[unix].addresses[str(path)].idle == 1
                started = [e for e in tracer.events() if e.kind == "connect.complete"]
                assert {e.address for e in started} == {str(path), nginx.host}
                async with pool.connection(unix) as conn:
                    assert conn.address == (str(path), 0)
                    assert f"via unix:{path}" in repr(conn)
                    assert conn.extra(SocketAttribute.family) == socket.AF_UNIX
                    assert conn.extra(SocketAttribute.remote_address) == str(path)
            lines = nginx.wait_for_log(10)
            on_unix = [line for line in lines if line.server_addr == f"unix:{path}"]
            on_tcp = [line for line in lines if line.server_addr == nginx.host]
            # Five requests on one keep-alive connection, on each listener.
            assert [line.req for line in on_unix] == [1, 2, 3, 4, 5]
            assert [line.req for line in on_tcp] == [1, 2, 3, 4, 5]
            assert len({line.conn for line in on_unix}) == 1
            assert {line.remote_addr for line in on_unix} == {"unix:"}


@pytest.mark.realserver
async def test_tls_over_a_unix_socket_with_server_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    chain, key = write_cert_files(ca, ["nginx.test"], tmp_path)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket_directory() as directory:
        path = directory / "tls.sock"
        with NginxServer(
            directory / "nginx", tls_cert=chain, tls_key=key, unix_tls_socket=path
        ) as nginx:
            assert nginx.running
            ep = conpool.Endpoint.unix(
                str(path), tls=conpool.TLS(context, server_name="nginx.test")
            )
            wrong = conpool.Endpoint.unix(
                str(path), tls=conpool.TLS(context, server_name="other.test")
            )
            async with conpool.Pool(conpool.Config(connect_retries=0)) as pool:
                for _ in range(3):
                    async with pool.connection(ep) as conn:
                        assert await http_get(conn, "nginx.test") == b"ok\n"
                        assert conn.extra(TLSAttribute.tls_version)
                assert check_quiet(pool).endpoints[ep].created == 1
                with pytest.raises(conpool.ConnectError) as info:
                    await pool.acquire(wrong)
                assert f"connecting to unix:{path}" in str(info.value)
                assert info.value.attempts == 1  # a certificate error is not retried


async def test_unix_liveness_leaks_and_errors(unix_echo: UnixEchoServer) -> None:
    ep = conpool.Endpoint.unix(str(unix_echo.path))
    tracer = conpool.Tracer()
    async with conpool.Pool(tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first = conn.id
            assert await echo(conn, b"one") == b"one"
        await eventually(lambda: unix_echo.accepted == 1)
        # The server closes it while idle: the probe notices, a new one is made.
        unix_echo.close_all()
        await anyio.sleep(0.05)
        async with pool.connection(ep) as conn:
            assert conn.id != first
            assert await echo(conn, b"two") == b"two"
        assert [e.detail for e in tracer.events() if e.kind == "conn.close"] == ["stale"]
        # Dropped without release: reclaimed, with a ResourceWarning.
        del conn  # (the idle connection the next acquire hands out)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dropped = await pool.acquire(ep)
            del dropped
            gc.collect()
            await eventually(
                lambda: any(e.kind == "conn.leaked" for e in tracer.events()), what="reclaimed"
            )
        assert any(issubclass(w.category, ResourceWarning) for w in caught)
        check_consistent(pool)
    missing = conpool.Endpoint.unix(str(unix_echo.path.with_name("missing.sock")))
    async with conpool.Pool(conpool.Config(connect_retries=1, retry_backoff=0.01)) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(missing)
        lines = str(info.value).splitlines()
        assert "No such file or directory" in lines[0]
        assert lines[1:] == [
            f"  connecting to unix:{missing.path}",
            f"  connecting to {missing}",
            "  after 1 retry attempt (2 attempts in all)",
        ]


async def test_unix_floor_refills_after_the_server_closes(unix_echo: UnixEchoServer) -> None:
    ep = conpool.Endpoint.unix(str(unix_echo.path))
    async with conpool.Pool(conpool.Config(min_idle=2)) as pool:
        assert await pool.prewarm(ep) == 2
        await eventually(lambda: unix_echo.accepted == 2, what="the server saw both")
        unix_echo.close_all()
        await eventually(
            lambda: (
                pool.stats().endpoints[ep].refills == 2 and pool.stats().endpoints[ep].idle == 2
            ),
            3.0,
            what="the floor refilled",
        )
        await eventually(lambda: unix_echo.accepted == 4, what="the server saw the refills")


async def test_tcp_options_are_skipped_on_unix_sockets(unix_echo: UnixEchoServer) -> None:
    options = [
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16),
    ]
    config = conpool.Config(socket_options=options, local_address="127.0.0.5")
    ep = conpool.Endpoint.unix(str(unix_echo.path))
    async with conpool.Pool(config) as pool, pool.connection(ep) as conn:
        assert await echo(conn, b"x") == b"x"
        sock = conn.extra(SocketAttribute.raw_socket)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


# -- socket options and the source address ----------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_socket_options_read_back_with_getsockopt(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tls: bool
) -> None:
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 37),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 11),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
    ]
    if tls:
        context = tls_echo_server.client_context()
        ep = conpool.Endpoint(
            "127.0.0.1", tls_echo_server.port, tls=conpool.TLS(context, server_name="pool.test")
        )
    else:
        ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool(conpool.Config(socket_options=options)) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"opts") == b"opts"
            sock = conn.extra(SocketAttribute.raw_socket)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 37
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 11
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
            # Nagle stays off unless the options say otherwise.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_tcp_nodelay_by_default_and_off_when_asked(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    for options, expected in (((), 1), ([(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)], 0)):
        async with (
            conpool.Pool(conpool.Config(socket_options=options)) as pool,
            pool.connection(ep) as conn,
        ):
            sock = conn.extra(SocketAttribute.raw_socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == expected


@pytest.mark.realserver
async def test_local_address_is_the_source_nginx_logs() -> None:
    with socket_directory() as directory, NginxServer(directory / "nginx") as nginx:
        ep = conpool.Endpoint(nginx.host, nginx.port)
        config = conpool.Config(local_address="127.0.0.5")
        async with conpool.Pool(config) as pool:
            for _ in range(3):
                async with pool.connection(ep) as conn:
                    assert await http_get(conn) == b"ok\n"
                    assert conn.extra(SocketAttribute.local_address)[0] == "127.0.0.5"
                    assert conn.extra(SocketAttribute.local_port) > 0
        lines = nginx.wait_for_log(3)
        assert {(line.remote_addr, line.server_addr) for line in lines} == {
            ("127.0.0.5", nginx.host)
        }
        assert [line.req for line in lines] == [1, 2, 3]  # one keep-alive connection


async def test_local_address_with_the_wrong_family_fails_once(echo_server: EchoServer) -> None:
    try:
        server = EchoServer("::1")
    except OSError:
        skip_or_fail("no IPv6 loopback")
    with server:
        ep = conpool.Endpoint("::1", server.port)
        config = conpool.Config(local_address="127.0.0.5", connect_retries=3)
        async with conpool.Pool(config) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
            assert "local_address 127.0.0.5 cannot reach the IPv6 address ::1" in str(info.value)
            assert info.value.attempts == 1  # a configuration error: not retried
        assert server.accepted == 0


async def test_an_option_the_kernel_refuses_fails_once_naming_it(
    echo_server: EchoServer,
) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(socket_options=[(socket.SOL_SOCKET, 9999, 1)], connect_retries=3)
    async with conpool.Pool(config) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        assert "setsockopt(1, 9999, 1) from socket_options" in str(info.value)
        assert info.value.attempts == 1
        check_consistent(pool)
    assert echo_server.accepted == 0


async def test_local_address_that_is_not_ours_fails_naming_it(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    # TEST-NET-1: not an address of this machine, so bind() refuses it.
    config = conpool.Config(local_address="192.0.2.1", connect_retries=2)
    async with conpool.Pool(config) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        assert "binding local_address 192.0.2.1" in str(info.value)
        assert info.value.attempts == 1
