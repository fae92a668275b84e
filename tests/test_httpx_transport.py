"""conpool.httpx.AsyncTransport's own surface: the 101/CONNECT hand-off,
arguments, ownership of the pool, unsupported URLs, and that ``import
conpool`` does not import httpx; on asyncio, uvloop and trio."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

import conpool
import conpool.httpx
from helpers_http import answering, replying
from helpers_pool import check_quiet

pytestmark = pytest.mark.anyio


class SwitchingServer:
    """Answers an ``Upgrade`` request with 101 (and a greeting in the same
    packet), a ``CONNECT`` with 200, then echoes every byte back."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accept = threading.Thread(target=self._serve, daemon=True)
        self.accept.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            th = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            th.start()
            self.threads.append(th)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                if head.startswith(b"CONNECT "):
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    conn.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                        b"Connection: Upgrade\r\n\r\nhello"
                    )
                if rest:
                    conn.sendall(rest)
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        # (shutdown wakes the thread blocked in accept; close alone does not.)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.accept.join(5)
        for th in self.threads:
            th.join(5)


@pytest.fixture
def switching() -> Iterator[SwitchingServer]:
    server = SwitchingServer()
    yield server
    server.close()


async def test_101_hands_the_connection_over(switching: SwitchingServer) -> None:
    t = conpool.httpx.AsyncTransport()
    url = f"http://127.0.0.1:{switching.port}/ws"
    async with httpx.AsyncClient(transport=t) as client:
        headers = {"Upgrade": "echo", "Connection": "Upgrade"}
        async with client.stream("GET", url, headers=headers) as r:
            assert r.status_code == 101
            stream = r.extensions["network_stream"]
            assert await stream.read(5) == b"hello"
            await stream.write(b"ping")
            assert await stream.read(100) == b"ping"
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", switching.port)
            # Out of the pool's reach while the caller has it.
            assert t.pool.stats().active == 1
        # Closing the response leaves the hand-off alone.
        await stream.write(b"still")
        assert await stream.read(100) == b"still"
        await stream.aclose()
        (ep,) = check_quiet(t.pool).endpoints.values()
        assert (ep.created, ep.closed, ep.idle) == (1, 1, 0)


async def test_connect_hands_the_connection_over(switching: SwitchingServer) -> None:
    t = conpool.httpx.AsyncTransport()
    url = f"http://127.0.0.1:{switching.port}"
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.request("CONNECT", url, extensions={"target": b"example.test:443"})
        assert r.status_code == 200
        stream = r.extensions["network_stream"]
        await stream.write(b"tunnel")
        assert await stream.read(100) == b"tunnel"
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.read(10)
        (ep,) = check_quiet(t.pool).endpoints.values()
        assert (ep.created, ep.closed) == (1, 1)


def test_import_conpool_does_not_import_httpx() -> None:
    code = (
        "import sys, conpool\n"
        "bad = [m for m in ('httpx', 'h11', 'httpcore') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"pool": "pool"}, TypeError, "pool must be a conpool.Pool"),
        ({"verify": "/etc/ssl/ca.pem"}, TypeError, "verify must be"),
        ({"retries": -1}, ValueError, "retries must be >= 0"),
        ({"retries": True}, TypeError, "retries must be an int"),
        ({"retries": 1.5}, TypeError, "retries must be an int"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        conpool.httpx.AsyncTransport(**kwargs)  # type: ignore[arg-type]


def test_pool_and_config_together_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        conpool.httpx.AsyncTransport(conpool.Pool(), config=conpool.Config())


async def test_a_shared_pool_stays_open(switching: SwitchingServer) -> None:
    async with conpool.Pool() as pool:
        t = conpool.httpx.AsyncTransport(pool)
        assert t.pool is pool
        async with httpx.AsyncClient(transport=t) as client:
            r = await client.get(f"http://127.0.0.1:{switching.port}/", headers={"Upgrade": "x"})
            await r.extensions["network_stream"].aclose()
        assert "open" in repr(pool)
        await t.aclose()
        assert "open" in repr(pool)
    owned = conpool.httpx.AsyncTransport()
    async with httpx.AsyncClient(transport=owned):
        pass
    assert "closed" in repr(owned.pool)
    with pytest.raises(RuntimeError, match="make a new transport"):
        async with httpx.AsyncClient(transport=owned):
            pass


async def test_verify_false_and_a_context() -> None:
    t = conpool.httpx.AsyncTransport(verify=False)
    context = t._tls.context
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    mine = ssl.create_default_context()
    t2 = conpool.httpx.AsyncTransport(verify=mine)
    assert t2._tls.context is mine


async def test_unsupported_scheme() -> None:
    t = conpool.httpx.AsyncTransport()
    async with t:
        with pytest.raises(httpx.UnsupportedProtocol, match="ftp"):
            await t.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))


@pytest.mark.parametrize(
    "headers",
    [{"X-Bad": "a\r\nInjected: yes"}, {"Bad Name": "x"}, {"X-Nul": "a\x00b"}],
)
async def test_malformed_headers_are_refused(
    switching: SwitchingServer, headers: dict[str, str]
) -> None:
    t = conpool.httpx.AsyncTransport()
    async with httpx.AsyncClient(transport=t) as client:
        with pytest.raises(httpx.LocalProtocolError, match="Illegal header"):
            await client.get(f"http://127.0.0.1:{switching.port}/", headers=headers)
        # Refused before anything was sent; the connection was not kept.
        stats = check_quiet(t.pool)
        assert stats.active == 0 and stats.idle == 0


async def test_a_non_ascii_method_is_refused(switching: SwitchingServer) -> None:
    t = conpool.httpx.AsyncTransport()
    async with httpx.AsyncClient(transport=t) as client:
        with pytest.raises(httpx.LocalProtocolError, match="Illegal method"):
            await client.request("GÉT", f"http://127.0.0.1:{switching.port}/")
        check_quiet(t.pool)


async def test_a_malformed_response_head_is_httpx_remote_protocol_error() -> None:
    with answering(b"HTTP/1.1 abc OK\r\n\r\n") as port:
        t = conpool.httpx.AsyncTransport()
        async with httpx.AsyncClient(transport=t) as client:
            url = f"http://127.0.0.1:{port}/x"
            with pytest.raises(httpx.RemoteProtocolError) as info:
                await client.get(url)
            message = str(info.value)
            assert message.startswith("malformed response")
            assert f"reading the response to GET {url}" in message
            assert "on connection #" in message
            assert info.value.request.url == url
            check_quiet(t.pool)


async def test_a_body_cut_short_is_httpx_remote_protocol_error() -> None:
    # The head and a part of the body come, then the server closes.
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial") as port:
        t = conpool.httpx.AsyncTransport()
        async with httpx.AsyncClient(transport=t) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection") as info:
                await client.get(f"http://127.0.0.1:{port}/")
            assert "reading the body of the response to GET" in str(info.value)
            (ep,) = check_quiet(t.pool).endpoints.values()
            assert (ep.created, ep.closed, ep.idle) == (1, 1, 0)


@pytest.mark.parametrize(
    ("head", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", 1),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 3),
    ],
)
async def test_a_head_response_without_framing_headers_keeps_its_connection(
    head: bytes, connections: int
) -> None:
    # llhttp alone would read a body until close after such a head.
    with replying(head) as server:
        t = conpool.httpx.AsyncTransport()
        async with httpx.AsyncClient(transport=t) as client:
            for _ in range(3):
                r = await client.head(f"http://127.0.0.1:{server.port}/")
                assert (r.status_code, r.content) == (200, b"")
            (ep,) = check_quiet(t.pool).endpoints.values()
            assert ep.created == connections
            assert [len(heads) for heads in server.heads] == [3 // connections] * connections
