"""The test suite's own servers start, answer and stop (by PID, leaving nothing behind)."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import anyio
import pytest
import trustme

from servers import (
    POOL_ADDRESSES,
    DnsmasqServer,
    EchoServer,
    NginxServer,
    RedisServer,
    ServerProcess,
    TLSEchoServer,
    need,
    need_root,
    pid_alive,
    refused_port,
    socket_directory,
    unused_port,
    wait_for,
    write_cert_files,
)

realserver = pytest.mark.realserver


def http_get(sock: socket.socket | ssl.SSLSocket, host: str, path: str = "/") -> bytes:
    """One HTTP/1.1 keep-alive GET on *sock*; returns the body (sized or chunked)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""

    def more() -> None:
        nonlocal data
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk

    while b"\r\n\r\n" not in data:
        more()
    head, data = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    if headers.get(b"transfer-encoding") == b"chunked":
        while not data.endswith(b"0\r\n\r\n"):
            more()
        body = b""
        while (size := int(data.split(b"\r\n", 1)[0], 16)) > 0:
            body += data.split(b"\r\n", 1)[1][:size]
            data = data.split(b"\r\n", 1)[1][size + 2 :]
        return body
    while len(data) < int(headers[b"content-length"]):
        more()
    return data


def assert_stopped(server: ServerProcess) -> None:
    pid = server.last_pid
    assert pid is not None
    server.stop()
    assert not server.running
    assert not pid_alive(pid)
    assert server.pids() == []  # no worker left in its process group either


# -- skipping --------------------------------------------------------------


def test_need_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        need("no-such-binary-conpool", "a test")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="nothing may skip"):
        need("no-such-binary-conpool", "a test")
    assert need("sh", "a test").endswith("/sh")


def test_need_root_fails_in_ci_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception):
        need_root("iptables")


# -- ports -----------------------------------------------------------------


def test_unused_and_refused_ports() -> None:
    port = unused_port(udp=True)
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))
    port = unused_port("127.0.0.11", extra_hosts=POOL_ADDRESSES[1:])
    for address in POOL_ADDRESSES:
        with socket.socket() as sock:
            sock.bind((address, port))
    refused = refused_port()
    assert refused_port() == refused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", refused), timeout=2).close()


# -- nginx -----------------------------------------------------------------


@realserver
def test_nginx_keepalive_logs_both_requests_on_one_connection(nginx: NginxServer) -> None:
    with socket.create_connection((nginx.host, nginx.port), timeout=5) as sock:
        assert http_get(sock, nginx.host) == b"ok\n"
        assert http_get(sock, nginx.host) == b"ok\n"
        client_port = sock.getsockname()[1]
    first, second = nginx.wait_for_log(2)
    assert (first.req, second.req) == (1, 2)
    assert first.conn == second.conn
    assert first.remote_port == second.remote_port == client_port
    assert (first.server_addr, first.server_port) == ("127.0.0.1", nginx.port)
    assert_stopped(nginx)


@realserver
def test_nginx4_listens_on_four_addresses(nginx4: NginxServer) -> None:
    assert nginx4.addresses == POOL_ADDRESSES
    for address in POOL_ADDRESSES:
        with socket.create_connection((address, nginx4.port), timeout=5) as sock:
            assert http_get(sock, address) == b"ok\n"
    lines = nginx4.wait_for_log(4)
    assert [line.server_addr for line in lines] == list(POOL_ADDRESSES)
    assert len({line.conn for line in lines}) == 4
    assert_stopped(nginx4)


@realserver
def test_nginx_keepalive_requests_and_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    chain, key = write_cert_files(ca, ["pool.test"], tmp_path)
    with NginxServer(
        tmp_path / "nginx", keepalive_requests=2, tls_cert=chain, tls_key=key
    ) as nginx:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        assert nginx.tls_port is not None
        with (
            socket.create_connection((nginx.host, nginx.tls_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="pool.test") as sock,
        ):
            assert http_get(sock, "pool.test") == b"ok\n"
            assert http_get(sock, "pool.test") == b"ok\n"
            assert sock.recv(1) == b""  # the 2nd response closed the connection
        if nginx.has_sleep:
            with socket.create_connection((nginx.host, nginx.port), timeout=5) as sock:
                started = time.monotonic()
                assert http_get(sock, nginx.host, "/sleep?s=0.2") == b"ok\n"
                assert time.monotonic() - started >= 0.2
        assert nginx.wait_for_log(2)[1].server_port == nginx.tls_port


# -- redis -----------------------------------------------------------------


@realserver
def test_redis_ping(redis: RedisServer) -> None:
    with socket.create_connection(redis.address, timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    assert_stopped(redis)
    assert not redis.ping()


@realserver
def test_redis_with_password_and_unix_socket() -> None:
    with socket_directory() as directory:
        path = directory / "redis.sock"
        with RedisServer(directory / "redis", password="s3cret", unix_socket=path) as redis:
            assert redis.command(b"PING\r\n", 10).startswith(b"-NOAUTH")
            assert redis.command(b"AUTH wrong\r\n", 10).startswith(b"-WRONGPASS")
            assert redis.ping() and redis.ping(unix=True)
            # Only its owner may use the socket (--unixsocketperm 700).
            assert path.stat().st_mode & 0o777 == 0o700
            assert_stopped(redis)
            assert not redis.ping(unix=True)


@realserver
def test_nginx_on_a_unix_socket_and_tcp() -> None:
    with socket_directory() as directory:
        path = directory / "nginx.sock"
        with NginxServer(directory / "nginx", unix_socket=path) as nginx:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                assert http_get(sock, "localhost") == b"ok\n"
                assert http_get(sock, "localhost") == b"ok\n"
            with socket.create_connection((nginx.host, nginx.port), timeout=5) as sock:
                assert http_get(sock, nginx.host) == b"ok\n"
            first, second, third = nginx.wait_for_log(3)
            assert (first.server_addr, first.remote_addr) == (f"unix:{path}", "unix:")
            assert (first.conn, first.req, second.conn, second.req) == (
                first.conn,
                1,
                first.conn,
                2,
            )
            assert (third.server_addr, third.server_port) == ("127.0.0.1", nginx.port)
            assert_stopped(nginx)


# -- dnsmasq ---------------------------------------------------------------


@realserver
def test_dnsmasq_answers_changes_and_restarts(dnsmasq: DnsmasqServer) -> None:
    answer = dnsmasq.resolver().resolve("pool.test", "A")
    assert sorted(rdata.to_text() for rdata in answer) == list(POOL_ADDRESSES)
    assert answer.rrset is not None
    assert answer.rrset.ttl == 1
    assert dnsmasq.query("pool.test", "AAAA") == []
    assert dnsmasq.query("missing.test") == []

    dnsmasq.set_records({"pool.test": ["127.0.0.12", "::1"], "other.test": ["127.0.0.20"]})
    assert dnsmasq.query("pool.test") == ["127.0.0.12"]
    assert dnsmasq.query("pool.test", "AAAA") == ["::1"]
    assert dnsmasq.query("other.test") == ["127.0.0.20"]

    port, pid = dnsmasq.port, dnsmasq.pid
    dnsmasq.stop()
    assert pid is not None
    assert not pid_alive(pid)
    dnsmasq.set_records({"pool.test": ["127.0.0.13"]})  # read when it starts again
    dnsmasq.start()
    assert dnsmasq.port == port
    assert dnsmasq.query("pool.test") == ["127.0.0.13"]
    assert dnsmasq.query("other.test") == []
    assert_stopped(dnsmasq)


@realserver
def test_dnsmasq_local_ttl_and_reload(tmp_path: Path) -> None:
    with DnsmasqServer(tmp_path, {"a.test": ["127.0.0.1"]}, local_ttl=5) as server:
        answer = server.resolver().resolve("a.test")
        assert answer.rrset is not None
        assert answer.rrset.ttl == 5
        server.send_signal(signal.SIGHUP)  # a plain reload keeps serving
        assert server.query("a.test") == ["127.0.0.1"]


# -- threaded echo servers -------------------------------------------------


def test_echo_server_round_trip_and_counts(echo_server: EchoServer) -> None:
    sockets = [socket.create_connection(echo_server.address, timeout=5) for _ in range(3)]
    try:
        for index, sock in enumerate(sockets):
            sock.sendall(b"hello %d" % index)
            assert sock.recv(100) == b"hello %d" % index
        echo_server.wait_for_current(3)
        assert echo_server.max_concurrent == 3
        assert echo_server.peer_ports == [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    echo_server.wait_for_current(0)
    assert echo_server.accepted == 3
    assert echo_server.errors == []


def test_echo_server_closes_idle_and_resets() -> None:
    with EchoServer("127.0.0.12", close_idle_after=0.2) as server:
        with socket.create_connection(server.address, timeout=5) as sock:
            assert sock.getpeername() == ("127.0.0.12", server.port)
            started = time.monotonic()
            assert sock.recv(10) == b""  # closed by the server after 0.2 s of silence
            assert time.monotonic() - started >= 0.15
        assert server.idle_closed == 1
    with EchoServer() as server, socket.create_connection(server.address, timeout=5) as sock:
        server.wait_for_current(1)
        assert server.close_all(reset=True) == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_tls_echo_server_round_trip(tls_echo_server: TLSEchoServer) -> None:
    context = ssl.create_default_context()
    tls_echo_server.ca.configure_trust(context)
    with (
        socket.create_connection(tls_echo_server.address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="pool.test") as sock,
    ):
        sock.sendall(b"secret")
        assert sock.recv(100) == b"secret"
    untrusting = ssl.create_default_context()
    with (
        socket.create_connection(tls_echo_server.address, timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.wrap_socket(raw, server_hostname="pool.test")
    wait_for(lambda: tls_echo_server.handshake_failures == 1)
    assert tls_echo_server.server_names == ["pool.test", "pool.test"]
    tls_echo_server.stop()
    assert tls_echo_server.current == 0


@pytest.mark.anyio
async def test_echo_server_from_every_backend(echo_server: EchoServer) -> None:
    async with await anyio.connect_tcp(*echo_server.address) as stream:
        await stream.send(b"ping")
        assert await stream.receive() == b"ping"
