"""conpool.Proxy, no_proxy matching and the sans-I/O proxy handshakes, with
no event loop and no socket: the proxy's side is scripted bytes."""

from __future__ import annotations

import base64
import pickle
import random
import ssl
import struct
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import conpool
from conpool._dialplan import DialPlan, blames_address, retryable
from conpool._noproxy import EnvironmentProxies, NoProxy
from conpool._proxy import (
    MAX_REPLY,
    ConnectHandshake,
    Handshake,
    Socks4Handshake,
    Socks5Handshake,
    parse_connect_reply,
)

# --------------------------------------------------------------------------
# Proxy


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("http://127.0.0.1:3128", "http", "127.0.0.1", 3128),
        ("http://proxy.test", "http", "proxy.test", 80),
        ("https://Proxy.Test.", "https", "proxy.test", 443),
        ("socks5://127.0.0.1", "socks5", "127.0.0.1", 1080),
        ("SOCKS5H://[::1]:1081/", "socks5h", "::1", 1081),
        ("socks4://10.0.0.1", "socks4", "10.0.0.1", 1080),
        ("socks4a://proxy.test:9050", "socks4a", "proxy.test", 9050),
    ],
)
def test_parse(url: str, scheme: str, host: str, port: int) -> None:
    proxy = conpool.Proxy.parse(url)
    assert (proxy.scheme, proxy.host, proxy.port) == (scheme, host, port)
    assert proxy.username is None and not proxy.has_credentials
    assert proxy.remote_dns == (scheme in ("socks5h", "socks4a"))
    assert proxy.is_tls == (scheme == "https")
    assert conpool.Proxy.parse(str(proxy)) == proxy
    assert eval(repr(proxy), {"Proxy": conpool.Proxy}) == proxy


def test_credentials_are_decoded_and_never_shown() -> None:
    proxy = conpool.Proxy.parse("http://us%40er:p%3Ass%40w0rd@127.0.0.1:3128")
    assert proxy.username == "us@er" and proxy.has_credentials
    assert proxy._password == "p:ss@w0rd"
    for text in (str(proxy), repr(proxy)):
        assert "p:ss" not in text and "us@er" not in text and "w0rd" not in text
    assert str(proxy) == "http://127.0.0.1:3128"
    assert repr(proxy) == "Proxy.parse('http://***@127.0.0.1:3128')"


def test_equality_and_hash_include_credentials() -> None:
    a = conpool.Proxy.parse("socks5://u:p@127.0.0.1")
    assert a == conpool.Proxy("socks5", "127.0.0.1", 1080, username="u", password="p")
    assert hash(a) == hash(conpool.Proxy.parse("socks5://u:p@127.0.0.1:1080"))
    assert a != conpool.Proxy.parse("socks5://u:q@127.0.0.1")
    assert a != conpool.Proxy.parse("socks5://127.0.0.1")
    assert a != "socks5://u:p@127.0.0.1"
    assert len({a, conpool.Proxy.parse("socks5://u:p@127.0.0.1:1080")}) == 1


def test_frozen_and_picklable() -> None:
    proxy = conpool.Proxy.parse("socks5h://u:p@proxy.test:1080")
    with pytest.raises(AttributeError):
        proxy.port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del proxy._host
    assert pickle.loads(pickle.dumps(proxy)) == proxy
    user_only = conpool.Proxy.parse("socks5://u@127.0.0.1")
    assert pickle.loads(pickle.dumps(user_only)) == user_only


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:3128", "the scheme is missing"),
        ("ftp://127.0.0.1", "proxy scheme must be one of http, https, socks5"),
        ("http://", "the host is missing"),
        ("http://127.0.0.1:3128/path", "no path, query or fragment"),
        ("http://127.0.0.1:3128?x=1", "no path, query or fragment"),
        ("http://127.0.0.1:port", "port 'port' is not a decimal number"),
        ("http://127.0.0.1:0", "port must be in 1..65535"),
        ("http://127.0.0.1:65536", "port must be in 1..65535"),
        ("http://127.0.0.1:99999999999999999999", "port must be in 1..65535"),
        ("http://::1:3128", "an IPv6 host needs brackets"),
        ("http://[::1", "'[' without a closing ']'"),
        ("http://[::1]x", "unexpected text after ']'"),
        ("http://:secret@127.0.0.1", "the username is empty"),
        ("http://bad host:1", "whitespace"),
        ("socks4://u:secret@127.0.0.1", "SOCKS4 has no passwords"),
        ("socks5://" + "u" * 256 + "@127.0.0.1", "SOCKS5 allows at most 255 bytes"),
        ("socks5://u:" + "p" * 256 + "@127.0.0.1", "SOCKS5 allows at most 255 bytes"),
    ],
)
def test_parse_errors_name_the_problem_and_hide_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid proxy URL") as caught:
        conpool.Proxy.parse(url)
    text = str(caught.value)
    assert message in text
    assert "secret" not in text
    if "@" in url:
        assert "***@" in text


def test_constructor_validation() -> None:
    with pytest.raises(TypeError, match="proxy scheme must be a str"):
        conpool.Proxy(1, "127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="proxy port must be an int"):
        conpool.Proxy("http", "127.0.0.1", True)
    with pytest.raises(TypeError, match="proxy host must be a str"):
        conpool.Proxy("http", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"proxy password must be a str or None, got bytes$"):
        conpool.Proxy("http", "h.test", username="u", password=b"secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="password given without a username"):
        conpool.Proxy("http", "h.test", password="x")
    with pytest.raises(TypeError, match="must be a str"):
        conpool.Proxy.parse(b"http://h.test")  # type: ignore[arg-type]
    context = ssl.create_default_context()
    assert conpool.Proxy.parse("https://h.test", tls_context=context).tls_context is context
    with pytest.raises(ValueError, match="only for https proxies"):
        conpool.Proxy.parse("http://h.test", tls_context=context)
    with pytest.raises(TypeError, match=r"tls_context must be an ssl\.SSLContext"):
        conpool.Proxy("https", "h.test", tls_context=object())  # type: ignore[arg-type]


_userinfo = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= 255)


@given(
    scheme=st.sampled_from(["http", "https", "socks5", "socks5h"]),
    user=_userinfo,
    password=_userinfo,
    port=st.integers(1, 65535),
    host=st.sampled_from(["127.0.0.1", "proxy.test", "[::1]", "xn--bcher-kva.example"]),
)
def test_parse_round_trips_any_credentials(
    scheme: str, user: str, password: str, port: int, host: str
) -> None:
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"
    proxy = conpool.Proxy.parse(url)
    assert (proxy.scheme, proxy.port, proxy.username, proxy._password) == (
        scheme,
        port,
        user,
        password,
    )
    assert str(proxy) == f"{scheme}://{host}:{port}"
    assert "***@" in repr(proxy)
    assert pickle.loads(pickle.dumps(proxy)) == proxy


# --------------------------------------------------------------------------
# no_proxy


@pytest.mark.parametrize(
    ("entries", "host", "port", "bypass"),
    [
        (["*"], "anything.test", 1, True),
        (["example.com"], "example.com", 80, True),
        (["example.com"], "www.example.com", 80, True),
        (["example.com"], "notexample.com", 80, False),
        ([".example.com"], "www.example.com", 80, True),
        ([".example.com"], "example.com", 80, False),  # httpx: subdomains only
        (["*.example.com"], "a.b.example.com", 80, True),
        (["Example.COM."], "example.com", 80, True),
        (["localhost"], "localhost", 80, True),
        (["localhost"], "sub.localhost", 80, False),
        (["127.0.0.1"], "127.0.0.1", 80, True),
        (["127.0.0.1"], "127.0.0.2", 80, False),
        (["::1"], "::1", 80, True),
        (["[::1]"], "::1", 80, True),
        (["10.0.0.0/8"], "10.1.2.3", 80, True),
        (["10.0.0.0/8"], "11.0.0.1", 80, False),
        (["10.0.0.0/8"], "ten.test", 80, False),
        (["fd00::/8"], "fd12::1", 80, True),
        (["[fd00::]/8"], "fd12::1", 80, True),
        (["fd00::/8"], "10.0.0.1", 80, False),
        (["example.com:8080"], "example.com", 8080, True),
        (["example.com:8080"], "example.com", 80, False),
        (["[::1]:8080"], "::1", 8080, True),
        (["[::1]:8080"], "::1", 80, False),
        (["127.0.0.0/8:80"], "127.0.0.5", 80, True),
        (["http://example.com"], "example.com", 443, True),
        ([" example.com "], "example.com", 443, True),
        ([], "example.com", 80, False),
        (["b\u00fccher.example"], "xn--bcher-kva.example", 80, True),
    ],
)
def test_no_proxy_matching(entries: list[str], host: str, port: int, bypass: bool) -> None:
    assert NoProxy(entries).matches_host(host, port) is bypass
    endpoint = conpool.Endpoint(host, port)
    assert NoProxy(entries).matches(endpoint) is bypass


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["ok.test", ""], r"no_proxy\[1\] '': empty entry"),
        (["10.0.0.0/33"], r"no_proxy\[0\] '10.0.0.0/33': not a valid CIDR"),
        (["bad host"], r"no_proxy\[0\] 'bad host': invalid host"),
        (["example.com:http"], r"port 'http' is not in 1..65535"),
        (["example.com:0"], r"port '0' is not in 1..65535"),
        (["[::1"], r"'\[' without a closing '\]'"),
    ],
)
def test_no_proxy_errors_name_the_entry(entries: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoProxy(entries)


def test_no_proxy_types() -> None:
    with pytest.raises(TypeError, match="split a NO_PROXY value on ','"):
        NoProxy("example.com")
    with pytest.raises(TypeError, match=r"no_proxy\[0\] must be a str, got int"):
        NoProxy([3])  # type: ignore[list-item]
    assert NoProxy(["*"]).bypass_all and not NoProxy(["a.test"]).bypass_all
    assert not NoProxy([]) and NoProxy(["a.test"])


# --------------------------------------------------------------------------
# Config


def test_config_proxy_fields() -> None:
    proxy = conpool.Proxy.parse("socks5://u:secret@127.0.0.1")
    config = conpool.Config(proxy=proxy, no_proxy=["localhost", ".internal.test"])
    assert config.no_proxy == ("localhost", ".internal.test")
    assert config.proxy_for("pool.test", 80) is proxy
    assert config.proxy_for("localhost", 80) is None
    assert config.proxy_for("db.internal.test", 5432) is None
    assert "secret" not in repr(config)
    assert conpool.Config().proxy_for("pool.test", 80) is None
    assert conpool.Config(proxy=proxy).proxy_for("localhost", 80) is proxy


def test_config_proxy_validation() -> None:
    with pytest.raises(
        TypeError, match=r"conpool.Proxy or None, got str \(use conpool.Proxy.parse"
    ):
        conpool.Config(proxy="socks5://127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no_proxy must be a sequence of str"):
        conpool.Config(no_proxy="localhost")
    with pytest.raises(ValueError, match=r"no_proxy\[0\]"):
        conpool.Config(no_proxy=["a b"])


# --------------------------------------------------------------------------
# Driving a handshake over scripted bytes


def drive(hs: Handshake, replies: list[bytes]) -> tuple[list[bytes], bytes]:
    """Run *hs* against a scripted proxy: each of *replies* is what the proxy
    sends after reading our next message.  Returns what we sent, message by
    message, and what was left unread after the handshake (the tunnel's)."""
    sent: list[bytes] = []
    pending = b""
    script = iter(replies)
    while True:
        out = hs.data_to_send()
        if out:
            sent.append(out)
            pending += next(script, b"")
        if hs.done:
            return sent, pending
        if not pending:
            raise hs.closed()
        used = hs.feed(pending)
        assert 1 <= used <= len(pending)
        pending = pending[used:]


def drive_chunked(hs: Handshake, stream: bytes, cuts: list[int]) -> int:
    """Send everything *hs* wants, then feed *stream* in pieces cut at *cuts*;
    return how many bytes it used in all."""
    used = 0
    position = 0
    bounds = [*sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    for bound in bounds:
        piece = stream[position:bound]
        position = bound
        while piece and not hs.done:
            hs.data_to_send()
            n = hs.feed(piece)
            assert n >= 1
            used += n
            piece = piece[n:]
        if hs.done:
            break
    return used


PROXY = conpool.Proxy.parse("http://127.0.0.1:3128")
AUTH_PROXY = conpool.Proxy.parse("http://alice:open%20sesame@127.0.0.1:3128")
OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_connect_request_and_success() -> None:
    hs = PROXY.handshake("127.0.0.11", 8080)
    assert isinstance(hs, ConnectHandshake)
    sent, left = drive(hs, [OK + b"SERVER FIRST"])
    assert sent == [b"CONNECT 127.0.0.11:8080 HTTP/1.1\r\nHost: 127.0.0.11:8080\r\n\r\n"]
    assert left == b"SERVER FIRST"  # the target's bytes are not taken
    assert hs.done and hs.status == 200


def test_connect_with_basic_auth_and_ipv6_target() -> None:
    hs = AUTH_PROXY.handshake("::1", 443)
    assert isinstance(hs, ConnectHandshake)
    sent, _ = drive(hs, [b"HTTP/1.0 200 OK\nVia: x\n\n"])
    token = base64.b64encode(b"alice:open sesame").decode()
    assert sent == [
        f"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
    ]
    assert hs.headers == [("via", "x")]


@pytest.mark.parametrize(
    ("reply", "status", "blames", "retry", "words"),
    [
        (
            b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="x"'
            b"\r\n\r\n",
            407,
            False,
            False,
            "407 Proxy Authentication Required: it needs a user name and password"
            " (it offers Basic)",
        ),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", 403, True, True, "403 Forbidden"),
        (b"HTTP/1.1 500 Unable to connect\r\n\r\n", 500, True, True, "500 Unable to connect"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", 502, True, True, "502 Bad Gateway"),
        (b"HTTP/1.1 405 Method Not Allowed\r\n\r\n", 405, False, False, "405"),
        (b"HTTP/1.1 400\r\n\r\n", 400, False, False, "refused the tunnel to 127.0.0.11:80: 400"),
    ],
)
def test_connect_refusals(reply: bytes, status: int, blames: bool, retry: bool, words: str) -> None:
    with pytest.raises(conpool.ProxyError) as caught:
        drive(PROXY.handshake("127.0.0.11", 80), [reply])
    error = caught.value
    assert (error.reply, error.blames_target, error.retryable) == (status, blames, retry)
    assert error.proxy is PROXY
    assert words in str(error) and str(PROXY) in str(error)


def test_connect_407_with_credentials_says_they_were_refused() -> None:
    with pytest.raises(conpool.ProxyError, match="the user name or password was not accepted"):
        drive(AUTH_PROXY.handshake("127.0.0.11", 80), [b"HTTP/1.1 407 No\r\n\r\n"])


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"],
)
def test_connect_to_something_else_than_an_http_proxy(reply: bytes) -> None:
    with pytest.raises(conpool.ProxyError, match="did not answer like an HTTP proxy") as caught:
        drive(PROXY.handshake("127.0.0.11", 80), [reply])
    assert not caught.value.retryable and caught.value.reply is None


def test_connect_reply_too_long() -> None:
    hs = PROXY.handshake("127.0.0.11", 80)
    hs.data_to_send()
    with pytest.raises(conpool.ProxyError, match="over 65536 bytes"):
        for _ in range(MAX_REPLY // 1000 + 2):
            hs.feed(b"x" * 1000)


def test_closed_and_stalled_errors() -> None:
    hs = PROXY.handshake("127.0.0.11", 80)
    with pytest.raises(conpool.ProxyError, match="closed the connection during the handshake"):
        drive(hs, [b"HTTP/1.1 200 OK\r\n"])  # hangs up before the blank line
    stalled = hs.stalled(2.5)
    assert "did not finish the handshake within 2.5 s" in str(stalled) and stalled.retryable
    assert hs.feed(b"") == 0


def test_parse_connect_reply() -> None:
    assert parse_connect_reply(b"HTTP/1.1 200 Connection established\r\nA: b \r\n\r\n") == (
        200,
        "Connection established",
        [("a", "b")],
    )
    assert parse_connect_reply(b"HTTP/1.0 204\r\n\r\n") == (204, "", [])
    for bad in (
        b"HTTP/1.1 20 x\r\n\r\n",
        b"http/1.1 200\r\n\r\n",
        b"HTTP/1.1 200\r\n x: y\r\n\r\n",
    ):
        with pytest.raises(ValueError):
            parse_connect_reply(bad)


def _socks5_reply(code: int = 0, atype: int = 1) -> bytes:
    if atype == 1:
        return bytes([5, code, 0, 1, 127, 0, 0, 1]) + struct.pack("!H", 1080)
    if atype == 4:
        return bytes([5, code, 0, 4]) + bytes(16) + struct.pack("!H", 1080)
    name = b"proxy.test"
    return bytes([5, code, 0, 3, len(name)]) + name + struct.pack("!H", 1080)


SOCKS5 = conpool.Proxy.parse("socks5://127.0.0.1:1080")
SOCKS5_AUTH = conpool.Proxy.parse("socks5h://alice:pw@127.0.0.1:1080")


@given(
    atype=st.sampled_from([1, 3, 4]),
    tail=st.binary(max_size=20),
    cuts=st.lists(st.integers(0, 60), max_size=8),
)
def test_socks5_any_split_uses_exactly_the_replies(
    atype: int, tail: bytes, cuts: list[int]
) -> None:
    """However the proxy's bytes arrive, the handshake uses exactly its
    replies and leaves the tunnel's bytes alone."""
    hs = SOCKS5.handshake("127.0.0.11", 8080)
    replies = b"\x05\x00" + _socks5_reply(0, atype)
    assert drive_chunked(hs, replies + tail, cuts) == len(replies)
    assert hs.done


@given(tail=st.binary(max_size=20), cuts=st.lists(st.integers(0, 80), max_size=8))
def test_connect_any_split_uses_exactly_the_reply(tail: bytes, cuts: list[int]) -> None:
    hs = PROXY.handshake("127.0.0.11", 8080)
    reply = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: x\r\n\r\n"
    assert drive_chunked(hs, reply + tail, cuts) == len(reply)
    assert hs.done


def test_socks5_without_auth() -> None:
    hs = SOCKS5.handshake("127.0.0.11", 8080)
    assert isinstance(hs, Socks5Handshake)
    sent, left = drive(hs, [b"\x05\x00", _socks5_reply() + b"hello"])
    assert sent == [b"\x05\x01\x00", b"\x05\x01\x00\x01\x7f\x00\x00\x0b\x1f\x90"]
    assert left == b"hello"


def test_socks5h_with_user_and_password_sends_the_name() -> None:
    hs = SOCKS5_AUTH.handshake("pool.test", 443)
    sent, _ = drive(hs, [b"\x05\x02", b"\x01\x00", _socks5_reply(0, 3)])
    assert sent == [
        b"\x05\x01\x02",
        b"\x01\x05alice\x02pw",
        b"\x05\x01\x00\x03\x09pool.test\x01\xbb",
    ]


def test_socks5_ipv6_target() -> None:
    sent, _ = drive(SOCKS5.handshake("::1", 80), [b"\x05\x00", _socks5_reply(0, 4)])
    assert sent[1] == b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x50"


def test_socks5_wrong_password() -> None:
    with pytest.raises(conpool.ProxyError, match="rejected the user name and password") as caught:
        drive(SOCKS5_AUTH.handshake("pool.test", 443), [b"\x05\x02", b"\x01\x01"])
    assert caught.value.reply == "AUTH_FAILED" and not caught.value.retryable


@pytest.mark.parametrize(
    ("proxy", "words"),
    [(SOCKS5, "it needs a user name and password"), (SOCKS5_AUTH, "does not accept user/password")],
)
def test_socks5_no_acceptable_methods(proxy: conpool.Proxy, words: str) -> None:
    with pytest.raises(conpool.ProxyError, match=words) as caught:
        drive(proxy.handshake("127.0.0.11", 80), [b"\x05\xff"])
    assert caught.value.reply == "NO_ACCEPTABLE_METHODS"


def test_socks5_method_not_offered() -> None:
    with pytest.raises(conpool.ProxyError, match="chose authentication USERNAME_PASSWORD"):
        drive(SOCKS5.handshake("127.0.0.11", 80), [b"\x05\x02"])


@pytest.mark.parametrize(
    ("code", "name", "blames"),
    [
        (1, "GENERAL_SERVER_FAILURE", True),
        (2, "CONNECTION_NOT_ALLOWED_BY_RULESET", True),
        (3, "NETWORK_UNREACHABLE", True),
        (4, "HOST_UNREACHABLE", True),
        (5, "CONNECTION_REFUSED", True),
        (6, "TTL_EXPIRED", True),
        (7, "COMMAND_NOT_SUPPORTED", False),
        (8, "ADDRESS_TYPE_NOT_SUPPORTED", False),
        (0x42, "0x42", False),
    ],
)
def test_socks5_reply_codes_by_name(code: int, name: str, blames: bool) -> None:
    # Only the first two bytes: a refusing proxy may hang up right after.
    with pytest.raises(conpool.ProxyError) as caught:
        drive(SOCKS5.handshake("127.0.0.11", 80), [b"\x05\x00", bytes([5, code])])
    error = caught.value
    assert error.reply == name and error.blames_target is blames and error.retryable is blames
    assert f"could not open a tunnel to 127.0.0.11:80: {name}" in str(error)


@pytest.mark.parametrize(
    ("replies", "words"),
    [
        ([b"HT"], "did not answer like a SOCKS5 proxy"),
        ([b"\x05\x00", b"\x05\x00\x00\x09"], "unknown address type 0x09"),
        ([b"\x05\x00", b"\x05\x00\x00"], "closed the connection during the handshake"),
    ],
)
def test_socks5_broken_proxies(replies: list[bytes], words: str) -> None:
    with pytest.raises(conpool.ProxyError, match=words):
        drive(SOCKS5.handshake("127.0.0.11", 80), replies)


SOCKS4 = conpool.Proxy.parse("socks4://bob@127.0.0.1:1080")
SOCKS4A = conpool.Proxy.parse("socks4a://127.0.0.1:1080")
SOCKS4_OK = b"\x00\x5a\x00\x00\x00\x00\x00\x00"


def test_socks4_and_socks4a_requests() -> None:
    hs = SOCKS4.handshake("127.0.0.11", 8080)
    assert isinstance(hs, Socks4Handshake)
    sent, left = drive(hs, [SOCKS4_OK + b"x"])
    assert sent == [b"\x04\x01\x1f\x90\x7f\x00\x00\x0bbob\x00"]
    assert left == b"x"
    sent, _ = drive(SOCKS4A.handshake("pool.test", 80), [SOCKS4_OK])
    assert sent == [b"\x04\x01\x00\x50\x00\x00\x00\xff\x00pool.test\x00"]
    sent, _ = drive(SOCKS4A.handshake("127.0.0.11", 80), [SOCKS4_OK])
    assert sent == [b"\x04\x01\x00\x50\x7f\x00\x00\x0b\x00"]


@given(cuts=st.lists(st.integers(0, 12), max_size=6), tail=st.binary(max_size=8))
def test_socks4_any_split(cuts: list[int], tail: bytes) -> None:
    hs = SOCKS4.handshake("127.0.0.11", 80)
    assert drive_chunked(hs, SOCKS4_OK + tail, cuts) == 8 and hs.done


@pytest.mark.parametrize(
    ("code", "name", "blames"),
    [
        (0x5B, "REQUEST_REJECTED_OR_FAILED", True),
        (0x5C, "CONNECTION_FAILED", False),
        (0x5D, "AUTHENTICATION_FAILED", False),
        (0x10, "0x10", False),
    ],
)
def test_socks4_reply_codes(code: int, name: str, blames: bool) -> None:
    with pytest.raises(conpool.ProxyError) as caught:
        drive(SOCKS4.handshake("127.0.0.11", 80), [bytes([0, code]) + bytes(6)])
    assert caught.value.reply == name and caught.value.blames_target is blames
    assert "SOCKS4 proxy socks4://127.0.0.1:1080" in str(caught.value)


def test_socks4_limits() -> None:
    with pytest.raises(conpool.ProxyError, match="SOCKS4 knows only IPv4") as caught:
        SOCKS4.handshake("::1", 80)
    assert caught.value.blames_target and caught.value.retryable
    with pytest.raises(conpool.ProxyError, match="socks4a for names"):
        SOCKS4.handshake("pool.test", 80)
    with pytest.raises(conpool.ProxyError, match="did not answer like a SOCKS4 proxy"):
        drive(SOCKS4.handshake("127.0.0.11", 80), [b"\x05" + bytes(7)])


def test_proxy_error_pickles_and_is_an_oserror() -> None:
    error = conpool.ProxyError(
        "the proxy x refused", proxy=SOCKS5, reply=407, blames_target=False, retryable=False
    )
    assert isinstance(error, OSError) and isinstance(error, conpool.PoolError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.proxy, copy.reply, copy.retryable) == (
        "the proxy x refused",
        SOCKS5,
        407,
        False,
    )


@given(
    kind=st.sampled_from(["connect", "connect-lf", "socks5", "socks5-name", "socks4"]),
    tail=st.binary(min_size=1, max_size=20),
)
def test_reading_what_it_wants_never_reads_past_the_reply(kind: str, tail: bytes) -> None:
    """A driver that cannot peek reads ``wants()`` bytes at a time: that
    takes the whole reply and not one byte of what follows."""
    proxy = {"socks5": SOCKS5, "socks5-name": SOCKS5_AUTH, "socks4": SOCKS4}.get(kind, PROXY)
    reply = {
        "connect": b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n",
        "connect-lf": b"HTTP/1.0 200 OK\nA: \r\n\n",
        "socks5": b"\x05\x00" + _socks5_reply(0, 1),
        "socks5-name": b"\x05\x02\x01\x00" + _socks5_reply(0, 3),
        "socks4": SOCKS4_OK,
    }[kind]
    hs = proxy.handshake("pool.test" if kind == "socks5-name" else "127.0.0.11", 80)
    stream = reply + tail
    position = 0
    while not hs.done:
        hs.data_to_send()
        want = hs.wants()
        assert want >= 1
        chunk = stream[position : position + want]
        assert hs.feed(chunk) == len(chunk)
        position += len(chunk)
    assert position == len(reply)
    assert hs.wants() == 0 and hs.feed(b"more") == 0


# --------------------------------------------------------------------------
# The environment, as httpx reads it


def test_environment_proxies() -> None:
    env = EnvironmentProxies(
        {
            "HTTP_PROXY": "proxy.test:3128",
            "https_proxy": "socks5://u:secret@127.0.0.1:1080",
            "HTTPS_PROXY": "http://ignored.test",
            "NO_PROXY": "localhost, .internal.test,,",
        }
    )
    assert env.http == conpool.Proxy.parse("http://proxy.test:3128")
    assert env.https == conpool.Proxy.parse("socks5://u:secret@127.0.0.1:1080")
    assert env.all is None and env.no_proxy == ("localhost", ".internal.test")
    tls = conpool.TLS()
    assert env.proxy_for(conpool.Endpoint("pool.test", 80)) == env.http
    assert env.proxy_for(conpool.Endpoint("pool.test", 443, tls=tls)) == env.https
    assert env.proxy_for(conpool.Endpoint("db.internal.test", 443, tls=tls)) is None
    assert "secret" not in repr(env)


def test_environment_all_proxy_and_star() -> None:
    env = EnvironmentProxies({"ALL_PROXY": "socks5h://127.0.0.1", "http_proxy": ""})
    assert env.http is None and env.proxy_for(conpool.Endpoint("a.test", 80)) == env.all
    assert EnvironmentProxies({"ALL_PROXY": "http://p.test", "NO_PROXY": "*"}).all is None
    assert EnvironmentProxies({}).proxy_for(conpool.Endpoint("a.test", 80)) is None


def test_environment_cgi_ignores_http_proxy() -> None:
    # httpoxy: in a CGI script HTTP_PROXY may come from the client.
    env = EnvironmentProxies({"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://evil.test"})
    assert env.http is None
    env = EnvironmentProxies({"REQUEST_METHOD": "GET", "http_proxy": "http://ok.test"})
    assert env.http == conpool.Proxy.parse("http://ok.test")


def test_environment_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match=r"HTTPS_PROXY: invalid proxy URL 'ftp://\*\*\*@x.test'"):
        EnvironmentProxies({"HTTPS_PROXY": "ftp://u:secret@x.test"})


# --------------------------------------------------------------------------
# What the dial plan makes of a proxy's failures


def test_dial_plan_retry_and_blame_of_proxy_errors() -> None:
    def error(*, blames: bool, retry: bool) -> conpool.ProxyError:
        return conpool.ProxyError("x", proxy=SOCKS5, blames_target=blames, retryable=retry)

    wrong_password = error(blames=False, retry=False)
    proxy_down = error(blames=False, retry=True)
    target_refused = error(blames=True, retry=True)
    assert not retryable(wrong_password) and not blames_address(wrong_password)
    assert retryable(proxy_down) and not blames_address(proxy_down)
    assert retryable(target_refused) and blames_address(target_refused)
    # Direct failures are as before: every one blames its address.
    assert retryable(ConnectionRefusedError()) and blames_address(ConnectionRefusedError())
    assert not retryable(ssl.SSLError()) and blames_address(ssl.SSLError())

    plan = DialPlan(2, 0.0, 0.0, random.Random(1))
    assert plan.next_round() == 0.0
    plan.failed("127.0.0.11", wrong_password)
    assert plan.next_round() is None  # nothing of this round could go otherwise
    assert plan.context("pool.test:80", 80, SOCKS5_AUTH) == [
        "connecting to tcp:127.0.0.11:80 via socks5h://127.0.0.1:1080",
        "connecting to pool.test:80",
    ]
    plan = DialPlan(2, 0.0, 0.0, random.Random(1))
    plan.next_round()
    plan.failed("::1", proxy_down)
    assert plan.next_round() == 0.0  # proxy down: another round
    assert plan.context("[::1]:80", 80)[0] == "connecting to tcp:[::1]:80"


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.isdigit()
)


@given(
    # ("localhost" is the one name that matches only itself.)
    name=st.lists(_label, min_size=1, max_size=3).map(".".join).filter(lambda n: n != "localhost"),
    sub=_label,
    port=st.integers(1, 65535),
)
def test_no_proxy_name_rules_hold_for_any_name(name: str, sub: str, port: int) -> None:
    """``name`` covers itself and every name under it, ``.name`` only the
    names under it; neither covers a name that merely ends the same way."""
    plain, dotted = NoProxy([name]), NoProxy(["." + name])
    below = f"{sub}.{name}"
    assert plain.matches_host(name, port) and plain.matches_host(below, port)
    assert not dotted.matches_host(name, port) and dotted.matches_host(below, port)
    assert not plain.matches_host(sub + name, port)
    assert NoProxy([f"{name}:{port}"]).matches_host(below, port)
    assert not NoProxy([f"{name}:{port}"]).matches_host(below, port % 65535 + 1)
