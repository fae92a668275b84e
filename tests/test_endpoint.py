"""Endpoint and TLS: normalisation, equality, parsing and every rejection."""

from __future__ import annotations

import copy
import enum
import ipaddress
import pickle
import ssl
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conpool._endpoint import TLS, Endpoint

# --- host normalisation ---------------------------------------------------


@pytest.mark.parametrize(
    ("given_host", "expected"),
    [
        ("pool.test", "pool.test"),
        ("POOL.Test", "pool.test"),
        ("pool.test.", "pool.test"),
        ("localhost", "localhost"),
        ("_dmarc.pool.test", "_dmarc.pool.test"),
        ("a-b.pool.test", "a-b.pool.test"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        # IDNA 2008, not 2003: "ß" is its own letter, not "ss".
        ("straße.de", "xn--strae-oqa.de"),
        # UTS #46 maps ideographic and full-width full stops to ".".
        ("bücher\u3002example", "xn--bcher-kva.example"),
        ("\uff41\uff42\uff43\uff0etest", "abc.test"),
        ("bücher\u3002", "xn--bcher-kva"),
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.1.", "10.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("[2001:DB8::0:1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("[fe80::1%Eth0]", "fe80::1%Eth0"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_host_normalisation(given_host: str, expected: str) -> None:
    assert Endpoint(given_host, 80).host == expected


def test_name_of_exactly_253_bytes_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert Endpoint(name, 1).host == name
    assert Endpoint(name + ".", 1).host == name


def test_ip_properties() -> None:
    v4 = Endpoint("127.0.0.1", 80)
    v6 = Endpoint("::1", 80)
    name = Endpoint("pool.test", 80)
    assert (v4.is_ip, v4.ip_version) == (True, 4)
    assert (v6.is_ip, v6.ip_version) == (True, 6)
    assert (name.is_ip, name.ip_version) == (False, None)


def test_str_subclass_host_is_stored_as_plain_str() -> None:
    class Host(str):
        pass

    ep = Endpoint(Host("pool.test"), 80)
    assert type(ep.host) is str


def test_int_subclass_port_is_stored_as_plain_int() -> None:
    class Port(enum.IntEnum):
        HTTP = 80

    ep = Endpoint("pool.test", Port.HTTP)
    assert type(ep.port) is int
    assert str(ep) == "pool.test:80"


# --- host rejections --------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        " pool.test",
        "pool.test ",
        "pool test",
        "pool.test\n",
        "pool\t.test",
        "pool\x00.test",
        "pool\x7f.test",
        "pool\u00a0test",
        "pool\u200b.test",  # zero-width space: never silently dropped
        "pool\u2028test",
        "a..b",
        ".pool.test",
        "pool.test..",
        "a" * 64 + ".test",
        ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),
        "pool.test:8080",
        "pool/test",
        "pool@test",
        "user:pw@pool.test",
        "[pool.test]",
        "[127.0.0.1]",
        "[::1",
        "::1]",
        "127.1",
        "2130706433",
        "1.2.3.4.5",
        "01.2.3.4",
        "pool.123",
        "😀.test",
        "bü--cher.test",
        "ü" * 70 + ".test",
        "\ud800.test",
        "fe80::1%",
        "1.2.3.4%eth0",
        "fe80::1%a]b",
        "fe80::1%a:b",
        "[fe80::1%a]b]",
    ],
)
def test_host_rejected_with_value_error_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="host") as info:
        Endpoint(bad, 80)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [None, b"pool.test", 1, ["pool.test"], ipaddress.ip_address("::1")])
def test_host_of_wrong_type_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="host must be a str"):
        Endpoint(bad, 80)  # type: ignore[arg-type]


def test_label_length_error_reports_the_limit() -> None:
    with pytest.raises(ValueError, match="63"):
        Endpoint("a" * 64, 80)
    with pytest.raises(ValueError, match="253"):
        Endpoint(".".join(["a" * 50] * 6), 80)


def test_colon_in_host_points_at_parse() -> None:
    with pytest.raises(ValueError, match=r"Endpoint\.parse"):
        Endpoint("pool.test:80", 80)


# --- port -------------------------------------------------------------------


@pytest.mark.parametrize("port", [1, 80, 443, 65535])
def test_valid_ports(port: int) -> None:
    assert Endpoint("pool.test", port).port == port


@pytest.mark.parametrize("port", [0, -1, 65536, 10**100])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ValueError, match=r"port must be in 1\.\.65535"):
        Endpoint("pool.test", port)


@pytest.mark.parametrize("port", [True, False, 80.0, "80", None, b"80"])
def test_port_not_an_int(port: object) -> None:
    with pytest.raises(TypeError, match="port must be an int"):
        Endpoint("pool.test", port)  # type: ignore[arg-type]


def test_tls_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="tls must be"):
        Endpoint("pool.test", 443, tls=ssl.create_default_context())  # type: ignore[arg-type]


# --- equality, hashing, immutability ----------------------------------------


def test_equal_spellings_are_one_key() -> None:
    spellings = [
        Endpoint("pool.test", 80),
        Endpoint("POOL.TEST.", 80),
        Endpoint.parse("Pool.Test:80"),
        Endpoint.parse("pool.test.:080"),
    ]
    assert len(set(spellings)) == 1
    assert len({hash(ep) for ep in spellings}) == 1
    assert Endpoint("::1", 443) == Endpoint("[::1]", 443) == Endpoint("0::1", 443)
    assert Endpoint("bücher.example", 1) == Endpoint("xn--bcher-kva.example", 1)


def test_port_and_tls_distinguish_endpoints() -> None:
    plain = Endpoint("pool.test", 443)
    assert plain != Endpoint("pool.test", 444)
    assert plain != Endpoint("pool.test", 443, tls=TLS())
    assert Endpoint("pool.test", 443, tls=TLS()) == Endpoint("pool.test", 443, tls=TLS())
    assert Endpoint("pool.test", 443, tls=TLS()) != Endpoint(
        "pool.test", 443, tls=TLS(alpn=("h2",))
    )
    assert plain != "pool.test:443"
    assert plain != ("pool.test", 443)


def test_endpoint_is_immutable() -> None:
    ep = Endpoint("pool.test", 80)
    with pytest.raises(FrozenInstanceError):
        ep.port = 81  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        ep._host = "other.test"
    with pytest.raises(FrozenInstanceError):
        del ep._port
    with pytest.raises(AttributeError):
        ep.anything = 1  # type: ignore[attr-defined]
    assert ep == Endpoint("pool.test", 80)


def test_endpoint_survives_pickle_and_copy() -> None:
    ep = Endpoint("bücher.example", 8443, tls=TLS(server_name="Other.Test", alpn=("h2",)))
    assert pickle.loads(pickle.dumps(ep)) == ep
    assert copy.copy(ep) == ep
    assert copy.deepcopy(ep) == ep
    plain = Endpoint("::1", 80)
    assert pickle.loads(pickle.dumps(plain)) == plain


# --- str, repr, parse ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ep", "text"),
    [
        (Endpoint("pool.test", 8080), "pool.test:8080"),
        (Endpoint("::1", 443), "[::1]:443"),
        (Endpoint("[::1]", 443), "[::1]:443"),
        (Endpoint("127.0.0.1", 80), "127.0.0.1:80"),
        (Endpoint("fe80::1%eth0", 80), "[fe80::1%eth0]:80"),
    ],
)
def test_str(ep: Endpoint, text: str) -> None:
    assert str(ep) == text
    assert Endpoint.parse(text) == ep


def test_repr() -> None:
    assert repr(Endpoint("Pool.Test", 8080)) == "Endpoint('pool.test', 8080)"
    assert repr(Endpoint("pool.test", 443, tls=TLS())) == "Endpoint('pool.test', 443, tls=TLS())"
    assert (
        repr(TLS(server_name="x.test", alpn=["h2"]))  # type: ignore[arg-type]
        == "TLS(server_name='x.test', alpn=('h2',))"
    )
    context = ssl.create_default_context()
    assert repr(TLS(context)) == f"TLS(context={context!r})"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("pool.test:8080", "pool.test", 8080),
        ("[::1]:443", "::1", 443),
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("POOL.test.:1", "pool.test", 1),
        ("pool.test:00443", "pool.test", 443),
        ("[fe80::1%eth0]:65535", "fe80::1%eth0", 65535),
    ],
)
def test_parse(text: str, host: str, port: int) -> None:
    ep = Endpoint.parse(text)
    assert (ep.host, ep.port, ep.tls) == (host, port, None)


def test_parse_passes_tls_through() -> None:
    tls = TLS(server_name="other.test")
    assert Endpoint.parse("pool.test:443", tls=tls).tls is tls


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pool.test", "port is missing"),
        ("pool.test:", "port is missing"),
        ("[::1]", "port is missing"),
        ("[::1]:", "port is missing"),
        ("[::1]443", "port is missing"),
        ("::1", "needs brackets"),
        ("::1:443", "needs brackets"),
        ("[::1:443", "closing"),
        ("pool.test:http", "not a decimal number"),
        ("pool.test: 80", "not a decimal number"),
        ("pool.test:+80", "not a decimal number"),
        ("pool.test:-80", "not a decimal number"),
        ("pool.test:8_0", "not a decimal number"),
        ("pool.test:\u0668\u0660", "not a decimal number"),  # Arabic-Indic "80"
        ("pool.test:0", r"1\.\.65535"),
        ("pool.test:65536", r"1\.\.65535"),
        ("pool.test:" + "9" * 5000, r"1\.\.65535"),
        (":80", "host must not be empty"),
        ("[]:80", "host"),
        ("pool..test:80", "empty label"),
    ],
)
def test_parse_rejections(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Endpoint.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://example.com",
            "invalid 'host:port' 'https://example.com': a URL is not accepted (scheme 'https');"
            " give the host and port, as in 'example.com:443', with tls=conpool.TLS()",
        ),
        (
            "http://Pool.Test:8080/path?q=1",
            "invalid 'host:port' 'http://Pool.Test:8080/path?q=1': a URL is not accepted"
            " (scheme 'http'); give the host and port, as in 'pool.test:8080'",
        ),
        (
            "redis://[::1]/0",
            "invalid 'host:port' 'redis://[::1]/0': a URL is not accepted (scheme 'redis');"
            " give the host and port, as in '[::1]:6379'",
        ),
        (
            "gopher://pool.test",
            "invalid 'host:port' 'gopher://pool.test': a URL is not accepted (scheme 'gopher');"
            " give the host and port, as in 'host:port'",
        ),
        (
            "http://[::1:80",  # urlsplit itself rejects this one
            "invalid 'host:port' 'http://[::1:80': a URL is not accepted (scheme 'http');"
            " give the host and port, as in 'host:port'",
        ),
    ],
)
def test_parse_says_urls_are_not_accepted(text: str, expected: str) -> None:
    # It used to read "https" as the host and complain that the port
    # '//example.com' was not a number.
    with pytest.raises(ValueError) as info:
        Endpoint.parse(text)
    assert str(info.value) == expected
    assert "not a decimal number" not in str(info.value)


def test_the_suggested_form_parses() -> None:
    with pytest.raises(ValueError, match=r"as in 'example\.com:443'"):
        Endpoint.parse("https://example.com")
    assert Endpoint.parse("example.com:443") == Endpoint("example.com", 443)


def test_parse_names_the_text() -> None:
    with pytest.raises(ValueError, match=r"'pool\.test'"):
        Endpoint.parse("pool.test")


def test_parse_needs_a_str() -> None:
    with pytest.raises(TypeError, match="host:port"):
        Endpoint.parse(b"pool.test:80")  # type: ignore[arg-type]


# --- TLS ------------------------------------------------------------------------


def test_default_tls_values_are_equal() -> None:
    assert TLS() == TLS()
    assert hash(TLS()) == hash(TLS())
    assert TLS(server_name="Pool.Test.") == TLS(server_name="pool.test")
    assert TLS(alpn=["h2", "http/1.1"]) == TLS(alpn=("h2", "http/1.1"))  # type: ignore[arg-type]
    assert TLS() != TLS(server_name="pool.test")
    assert TLS() != TLS(alpn=("h2",))
    assert TLS(alpn=("h2", "http/1.1")) != TLS(alpn=("http/1.1", "h2"))
    assert TLS() != object()


def test_contexts_compare_by_identity() -> None:
    context = ssl.create_default_context()
    assert TLS(context) == TLS(context)
    assert hash(TLS(context)) == hash(TLS(context))
    assert TLS(context) != TLS(ssl.create_default_context())
    assert TLS(context) != TLS()


def test_default_ssl_context_verifies_and_is_shared() -> None:
    context = TLS().ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert TLS().ssl_context is context
    assert TLS(server_name="x.test").ssl_context is context
    assert TLS().context is None


def test_alpn_gets_its_own_default_context() -> None:
    plain = TLS().ssl_context
    h2 = TLS(alpn=("h2",)).ssl_context
    assert h2 is not plain
    assert h2 is TLS(alpn=("h2",)).ssl_context
    assert h2.verify_mode == ssl.CERT_REQUIRED


def test_given_context_is_used_as_is() -> None:
    context = ssl.create_default_context()
    tls = TLS(context, alpn=("h2",))
    assert tls.ssl_context is context
    assert tls.context is context


def test_server_name() -> None:
    assert TLS().server_name is None
    assert TLS().server_name_for("pool.test") == "pool.test"
    assert TLS(server_name="Bücher.Example.").server_name == "xn--bcher-kva.example"
    assert TLS(server_name="other.test").server_name_for("10.0.0.1") == "other.test"
    # An IP endpoint without a server name checks the certificate for that IP.
    assert TLS().server_name_for("10.0.0.1") == "10.0.0.1"
    assert TLS(server_name="[::1]").server_name == "::1"
    assert Endpoint("pool.test", 443, tls=TLS()).server_name == "pool.test"
    assert Endpoint("pool.test", 443, tls=TLS(server_name="x.test")).server_name == "x.test"
    assert Endpoint("pool.test", 80).server_name is None


@pytest.mark.parametrize("bad", ["", "a b", "a..b", "x" * 64, "pool.test\n", "host:1"])
def test_server_name_rejections(bad: str) -> None:
    with pytest.raises(ValueError, match="server_name"):
        TLS(server_name=bad)


def test_tls_type_errors() -> None:
    with pytest.raises(TypeError, match=r"context must be an ssl\.SSLContext"):
        TLS(context="default")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="server_name must be a str"):
        TLS(server_name=b"pool.test")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpn must be a tuple"):
        TLS(alpn="h2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpn must be a tuple"):
        TLS(alpn=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="alpn protocols must be str"):
        TLS(alpn=(b"h2",))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "x" * 256, "hé"])
def test_alpn_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="alpn"):
        TLS(alpn=(bad,))


def test_alpn_of_255_bytes_is_accepted() -> None:
    assert TLS(alpn=("x" * 255,)).alpn == ("x" * 255,)


def test_tls_is_immutable() -> None:
    tls = TLS()
    with pytest.raises(FrozenInstanceError):
        tls.alpn = ("h2",)  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del tls._alpn
    assert pickle.loads(pickle.dumps(TLS(server_name="x.test"))) == TLS(server_name="x.test")


# --- properties -------------------------------------------------------------------

# Anything a caller might plausibly pass, and plenty they would not.
_objects = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.text(max_size=5)),
)

# Host-ish text: mostly characters that appear in real hosts, to reach deep
# into the validation, plus anything at all.
_host_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="abcXYZ019-_.:[]%ü ", max_size=80),
    st.from_regex(r"\A[a-zA-Z0-9_-]{1,70}(\.[a-zA-Z0-9_-]{1,70}){0,5}\.?\Z"),
    st.ip_addresses().map(str),
)


def _assert_names(exc: Exception, *fields: str) -> None:
    message = str(exc)
    assert any(field in message for field in fields), message


@settings(max_examples=400, deadline=None)
@given(host=_host_text, port=st.one_of(st.integers(-10, 70000), _objects))
def test_endpoint_constructs_or_names_the_bad_field(host: str, port: object) -> None:
    try:
        ep = Endpoint(host, port)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        _assert_names(exc, "host", "port")
        return
    assert ep.host.isascii()
    assert ep.host == ep.host.lower() or "%" in ep.host
    assert 1 <= ep.port <= 65535
    # Normalisation is idempotent, and str() parses back to the same key.
    assert Endpoint(ep.host, ep.port) == ep
    assert Endpoint.parse(str(ep)) == ep
    assert hash(Endpoint.parse(str(ep))) == hash(ep)


@settings(max_examples=200, deadline=None)
@given(host=_objects)
def test_endpoint_host_of_any_type(host: object) -> None:
    try:
        Endpoint(host, 80)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        _assert_names(exc, "host")


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.text(alphabet="ab.:[]%019ü ", max_size=40),
        st.builds(
            lambda host, port: f"{host}:{port}",
            _host_text,
            st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=6)),
        ),
    )
)
def test_parse_constructs_or_names_the_bad_field(text: str) -> None:
    try:
        ep = Endpoint.parse(text)
    except ValueError as exc:
        _assert_names(exc, "host", "port", "path")
        return
    assert Endpoint.parse(str(ep)) == ep
    assert (ep.path is None) == (not text.startswith("unix:") or ep.port != 0)


@st.composite
def _valid_hosts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return str(draw(st.ip_addresses()))
    labels = draw(
        st.lists(st.from_regex(r"\A[a-z0-9_-]{1,63}\Z"), min_size=1, max_size=4).filter(
            lambda ls: not ls[-1].isdigit()
        )
    )
    return ".".join(labels)


@settings(max_examples=300, deadline=None)
@given(host=_valid_hosts(), port=st.integers(1, 65535), alpn=st.booleans())
def test_round_trip_through_str(host: str, port: int, alpn: bool) -> None:
    tls = TLS(alpn=("h2",)) if alpn else None
    ep = Endpoint(host, port, tls=tls)
    assert Endpoint.parse(str(ep), tls=tls) == ep
    assert Endpoint(host.upper() + ".", port, tls=tls) == ep or ep.is_ip


@settings(max_examples=300, deadline=None)
@given(
    context=st.one_of(st.none(), _objects),
    server_name=st.one_of(st.none(), _host_text, _objects),
    alpn=st.one_of(
        st.lists(st.text(max_size=300), max_size=3).map(tuple),
        st.lists(st.text(alphabet="h2/.1", max_size=8), max_size=3),
        _objects,
    ),
)
def test_tls_constructs_or_names_the_bad_field(
    context: object, server_name: object, alpn: object
) -> None:
    try:
        tls = TLS(context, server_name, alpn)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        _assert_names(exc, "context", "server_name", "alpn")
        return
    assert tls == TLS(tls.context, tls.server_name, tls.alpn)
    assert hash(tls) == hash(TLS(tls.context, tls.server_name, tls.alpn))


# --- Unix domain sockets ----------------------------------------------------------


def test_unix_endpoint() -> None:
    ep = Endpoint.unix("/run/redis/redis.sock")
    assert ep.path == "/run/redis/redis.sock"
    assert ep.is_unix and not ep.is_ip and ep.ip_version is None
    assert (ep.host, ep.port, ep.tls, ep.server_name) == ("/run/redis/redis.sock", 0, None, None)
    assert str(ep) == "unix:/run/redis/redis.sock"
    assert repr(ep) == "Endpoint.unix('/run/redis/redis.sock')"
    assert Endpoint.parse("unix:/run/redis/redis.sock") == ep
    assert hash(Endpoint.parse(str(ep))) == hash(ep)
    assert Endpoint("pool.test", 80).path is None
    assert not Endpoint("pool.test", 80).is_unix


def test_unix_endpoint_takes_a_path_like(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    assert Endpoint.unix(sock) == Endpoint.unix(str(sock))  # type: ignore[arg-type]
    assert Endpoint.unix("relative.sock").path == "relative.sock"


def test_unix_endpoint_equality_and_pickle() -> None:
    tls = TLS(server_name="redis.test")
    a, b = Endpoint.unix("/tmp/a.sock"), Endpoint.unix("/tmp/a.sock")
    assert a == b and hash(a) == hash(b)
    assert a != Endpoint.unix("/tmp/b.sock")
    assert a != Endpoint.unix("/tmp/a.sock", tls=tls)
    # A path never equals a host of the same spelling on some port.
    assert Endpoint.unix("localhost") != Endpoint("localhost", 80)
    with_tls = Endpoint.unix("/tmp/a.sock", tls=tls)
    for ep in (a, with_tls):
        assert pickle.loads(pickle.dumps(ep)) == ep
        assert copy.deepcopy(ep) == ep
        assert pickle.loads(pickle.dumps(ep)).path == ep.path
    assert with_tls.server_name == "redis.test"
    assert repr(with_tls) == "Endpoint.unix('/tmp/a.sock', tls=TLS(server_name='redis.test'))"
    assert Endpoint.parse("unix:/tmp/a.sock", tls=tls) == with_tls
    with pytest.raises(FrozenInstanceError):
        a._path = "/other"


def test_unix_tls_needs_a_server_name() -> None:
    with pytest.raises(ValueError, match="server_name"):
        Endpoint.unix("/tmp/a.sock", tls=TLS())
    with pytest.raises(ValueError, match="server_name"):
        Endpoint.parse("unix:/tmp/a.sock", tls=TLS(alpn=("h2",)))
    with pytest.raises(TypeError, match="tls"):
        Endpoint.unix("/tmp/a.sock", tls="yes")  # type: ignore[arg-type]


def test_unix_path_of_107_bytes_is_accepted_108_is_not() -> None:
    longest = "/" + "a" * 106
    assert Endpoint.unix(longest).path == longest
    with pytest.raises(ValueError, match="107"):
        Endpoint.unix(longest + "a")
    # Bytes, not characters: "ü" is two of them.
    with pytest.raises(ValueError, match="108 bytes"):
        Endpoint.unix("/" + "ü" * 53 + "a")


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        ("", ValueError, "path must not be empty"),
        ("/tmp/a\0b", ValueError, "NUL"),
        ("\0abstract", ValueError, "NUL"),
        (b"/tmp/a.sock", TypeError, "path must be a str"),
        (None, TypeError, "path must be a str"),
        (7, TypeError, "path must be a str"),
    ],
)
def test_unix_path_rejections(bad: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        Endpoint.unix(bad)  # type: ignore[arg-type]


def test_parse_unix() -> None:
    assert Endpoint.parse("unix:./x.sock").path == "./x.sock"
    assert Endpoint.parse("unix:x.sock").path == "x.sock"
    # Digits only: still a host called "unix" with a port, as before.
    assert Endpoint.parse("unix:6379") == Endpoint("unix", 6379)
    with pytest.raises(ValueError, match="path must not be empty"):
        Endpoint.parse("unix:")


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=120))
def test_unix_constructs_or_names_the_path(path: str) -> None:
    try:
        ep = Endpoint.unix(path)
    except ValueError as exc:
        _assert_names(exc, "path")
        return
    assert ep.path == path and str(ep) == "unix:" + path
    if not (path.isascii() and path.isdigit()):
        assert Endpoint.parse(str(ep)) == ep
