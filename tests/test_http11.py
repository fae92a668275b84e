"""conpool._http11 without I/O: request heads and bodies as framed for the
wire, and responses as httptools (llhttp) parses them, fed in pieces."""

from __future__ import annotations

import gc

import h11
import httpx
import pytest

from conpool._http11 import MAX_HEAD, Framer, ProtocolError, Response, start_request


def feed(response: Response, data: bytes, step: int | None = None) -> None:
    """Feed ``data`` whole, or ``step`` bytes at a time (a head or a body
    split across receives)."""
    if step is None:
        response.feed(data)
        return
    for i in range(0, len(data), step):
        response.feed(data[i : i + step])


# -- responses ---------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_content_length_response_ends_and_keeps_its_connection(step: int | None) -> None:
    r = Response("GET")
    feed(r, b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", step)
    assert (r.head, r.complete, r.extra) == (True, True, False)
    status, headers, ext = r.parts()
    assert status == 200
    assert headers == [(b"Content-Length", b"5"), (b"X-A", b"b")]
    assert ext == {"http_version": b"HTTP/1.1", "reason_phrase": b"Fine Thanks"}
    assert b"".join(r.chunks) == b"hello"
    assert r.reusable()


@pytest.mark.parametrize("step", [None, 1, 5])
def test_a_chunked_body_with_trailers(step: int | None) -> None:
    r = Response("GET")
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    feed(r, data, step)
    assert r.complete and r.reusable()
    assert b"".join(r.chunks) == b"abcdefg"
    # Trailers are not response headers (h11 kept them apart too).
    assert r.headers == [(b"Transfer-Encoding", b"chunked")]


def test_interim_responses_are_skipped() -> None:
    r = Response("POST")
    r.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not r.head
    r.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n")
    assert not r.head
    r.feed(b"Content-Length: 2\r\n\r\nok")
    assert (r.status, r.reason, r.headers) == (201, b"Created", [(b"Content-Length", b"2")])
    assert r.complete and r.reusable() and r.chunks == [b"ok"]


def test_head_ends_at_its_head_whatever_the_content_length() -> None:
    r = Response("HEAD")
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert r.complete and r.reusable() and r.chunks == []


@pytest.mark.parametrize(
    ("head", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", False),
    ],
)
def test_a_head_response_keeps_its_connection_by_its_head_alone(
    head: bytes, reusable: bool
) -> None:
    # Without Content-Length or chunked, llhttp (not told of the HEAD)
    # would take the response for a body until close.
    for step in (None, 1):
        r = Response("HEAD")
        feed(r, head, step)
        assert (r.complete, r.extra, r.chunks) == (True, False, [])
        assert r.reusable() is reusable


def test_bytes_after_a_head_response_are_past_it() -> None:
    r = Response("HEAD")
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert r.complete and r.extra and not r.reusable()


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_for_204_and_304_even_with_a_content_length(status: int) -> None:
    r = Response("GET")
    r.feed(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert r.complete and r.reusable() and r.chunks == []


@pytest.mark.parametrize(
    "tail", [b"HTTP/1.1 2", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage"]
)
def test_bytes_past_the_response_mark_it(tail: bytes) -> None:
    r = Response("GET")
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + tail)
    assert r.complete and r.extra and not r.reusable()
    assert r.chunks == [b"ok"]


@pytest.mark.parametrize("step", [None, 1])
def test_blank_lines_after_the_end_are_skipped_and_other_bytes_are_past_it(
    step: int | None,
) -> None:
    # llhttp skips CRLFs between messages; so does the response after it
    # let go of its parser (a later feed).
    r = Response("GET")
    feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n", step)
    r.feed(b"\r\n")
    assert r.complete and not r.extra and r.reusable()
    r.feed(b"\r\nX")
    assert (r.extra, r.reusable()) == (True, False)


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        ("CONNECT", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        ("GET", b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
    ],
)
def test_an_ended_response_is_freed_without_the_cyclic_collector(method: str, data: bytes) -> None:
    # The parser holds the response's callbacks: were it kept past the end,
    # every response would be a reference cycle left to gc.
    gc.collect()
    gc.disable()
    try:
        before = _live_responses()
        r = Response(method)
        r.feed(data)
        if not r.complete:
            r.eof()
        assert r.complete
        del r
        assert _live_responses() == before
    finally:
        gc.enable()


def test_a_response_dropped_before_its_end_is_still_collected() -> None:
    # (Before its end the cycle stands; the cyclic collector frees it.)
    gc.collect()
    before = _live_responses()
    gc.disable()
    try:
        r = Response("GET")
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        del r
        assert _live_responses() == before + 1  # (the cycle holds it)
    finally:
        gc.enable()
    gc.collect()
    assert _live_responses() == before


def _live_responses() -> int:
    return sum(type(o) is Response for o in gc.get_objects())


def test_a_body_until_close_ends_at_eof_and_retires_the_connection() -> None:
    r = Response("GET")
    r.feed(b"HTTP/1.0 200 OK\r\n\r\nold ")
    r.feed(b"server")
    assert (r.head, r.complete) == (True, False)
    r.eof()
    assert r.complete and not r.reusable()
    assert b"".join(r.chunks) == b"old server"
    assert r.parts()[2]["http_version"] == b"HTTP/1.0"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
)
def test_eof_inside_a_framed_body_is_a_protocol_error(data: bytes) -> None:
    r = Response("GET")
    r.feed(data)
    with pytest.raises(ProtocolError, match="peer closed connection"):
        r.eof()


@pytest.mark.parametrize(
    ("data", "reuse"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
def test_keep_alive_as_the_response_says(data: bytes, reuse: bool) -> None:
    r = Response("GET")
    r.feed(data)
    assert r.complete and r.reusable() is reuse


def test_a_request_that_asked_to_close_does_not_reuse() -> None:
    r = Response("GET", close=True)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert r.complete and not r.reusable()


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"NOTHTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_responses_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed response"):
        Response("GET").feed(data)


def test_a_head_over_the_limit_is_refused() -> None:
    r = Response("GET")
    r.feed(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Big: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(ProtocolError, match="larger than"):
        for _ in range(MAX_HEAD // len(line) + 2):
            r.feed(line)


SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"


def test_101_leaves_what_follows_its_head() -> None:
    r = Response("GET")
    r.feed(SWITCHING + b"hello")
    assert (r.head, r.status, r.leading) == (True, 101, b"hello")


def test_a_101_is_freed_without_the_cyclic_collector() -> None:
    # The connection leaves HTTP at a 101: the parser is let go there.
    gc.collect()
    gc.disable()
    try:
        before = _live_responses()
        r = Response("GET")
        feed(r, SWITCHING, 1)
        assert (r.head, r.status, r.leading) == (True, 101, b"")
        del r
        assert _live_responses() == before
    finally:
        gc.enable()


@pytest.mark.parametrize("framing", [b"", b"Content-Length: 0\r\n", b"Content-Length: 5\r\n"])
def test_a_2xx_to_connect_leaves_every_byte_after_its_head_to_the_tunnel(framing: bytes) -> None:
    r = Response("CONNECT")
    r.feed(b"HTTP/1.1 200 Connection established\r\n" + framing + b"\r\n\x16\x03\x01tls")
    assert (r.head, r.complete, r.leading, r.chunks) == (True, True, b"\x16\x03\x01tls", [])


def test_a_refused_connect_is_an_ordinary_response() -> None:
    r = Response("CONNECT")
    r.feed(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nnope")
    assert (r.status, r.complete, r.chunks, r.leading) == (407, True, [b"nope"], b"")


# -- requests ----------------------------------------------------------------


def test_a_small_body_goes_with_its_head_and_the_head_is_framed_once() -> None:
    heads: dict = {}  # type: ignore[type-arg]
    request = httpx.Request("POST", "http://example.test/x?y=1", content=b"data")
    head, data, framer = start_request(request, heads)
    assert framer is None
    assert data.startswith(b"POST /x?y=1 HTTP/1.1\r\n") and data.endswith(b"\r\n\r\ndata")
    assert b"content-length: 4\r\n" in data.lower()
    again, _, _ = start_request(
        httpx.Request("POST", "http://example.test/x?y=1", content=b"abcd"), heads
    )
    assert again is head and len(heads) == 1


def test_a_small_chunked_body() -> None:
    request = httpx.Request(
        "POST",
        "http://example.test/",
        headers={"Transfer-Encoding": "chunked"},
        content=b"abc",
    )
    _, data, framer = start_request(request)
    assert framer is None and data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


def test_a_streamed_body_is_framed_by_its_head() -> None:
    chunked = Framer(None)
    assert chunked.data(b"x" * 20) == b"14\r\n" + b"x" * 20 + b"\r\n"
    assert chunked.end() == b"0\r\n\r\n"
    sized = Framer(3)
    assert sized.data(b"ab") == b"ab"
    with pytest.raises(h11.LocalProtocolError, match="Too little data"):
        sized.end()
    with pytest.raises(h11.LocalProtocolError, match="Too much data"):
        sized.data(b"cd")


def test_a_body_longer_than_its_content_length_is_refused() -> None:
    request = httpx.Request(
        "POST", "http://example.test/", headers={"Content-Length": "2"}, content=b"abc"
    )
    with pytest.raises(h11.LocalProtocolError, match="Too much data"):
        start_request(request)


@pytest.mark.parametrize(
    "headers",
    [{"X-Bad": "a\r\nInjected: yes"}, {"Bad Name": "x"}, {"X-Nul": "a\x00b"}],
)
def test_malformed_header_fields_are_refused_by_h11(headers: dict[str, str]) -> None:
    request = httpx.Request("GET", "http://example.test/", headers=headers)
    with pytest.raises(h11.LocalProtocolError, match="Illegal header"):
        start_request(request, {})


def test_a_request_that_says_close() -> None:
    request = httpx.Request("GET", "http://example.test/", headers={"Connection": "Close"})
    head, _, _ = start_request(request)
    assert head.close
    assert not start_request(httpx.Request("GET", "http://example.test/"))[0].close
