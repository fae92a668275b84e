"""conpool.httpx.Transport (httpx.Client) against servers that send what
nginx never does: a malformed head, a body cut short, a HEAD response
without framing headers.  The twins of tests/test_httpx_transport.py's."""

from __future__ import annotations

import httpx
import pytest

import conpool.httpx
from helpers_http import answering, replying
from helpers_pool import check_quiet


def test_a_malformed_response_head_is_httpx_remote_protocol_error() -> None:
    with answering(b"HTTP/1.1 abc OK\r\n\r\n") as port:
        t = conpool.httpx.Transport()
        with httpx.Client(transport=t) as client:
            url = f"http://127.0.0.1:{port}/x"
            with pytest.raises(httpx.RemoteProtocolError) as info:
                client.get(url)
            message = str(info.value)
            assert message.startswith("malformed response")
            assert f"reading the response to GET {url}" in message
            assert "on connection #" in message
            assert info.value.request.url == url
            check_quiet(t.pool)


def test_a_body_cut_short_is_httpx_remote_protocol_error() -> None:
    with answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial") as port:
        t = conpool.httpx.Transport()
        with httpx.Client(transport=t) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="peer closed connection") as info:
                client.get(f"http://127.0.0.1:{port}/")
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
def test_a_head_response_without_framing_headers_keeps_its_connection(
    head: bytes, connections: int
) -> None:
    with replying(head) as server:
        t = conpool.httpx.Transport()
        with httpx.Client(transport=t) as client:
            for _ in range(3):
                r = client.head(f"http://127.0.0.1:{server.port}/")
                assert (r.status_code, r.content) == (200, b"")
            (ep,) = check_quiet(t.pool).endpoints.values()
            assert ep.created == connections
            assert [len(heads) for heads in server.heads] == [3 // connections] * connections
