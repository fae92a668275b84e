"""Proxies: the :class:`Proxy` value, ``no_proxy`` matching, and sans-I/O
handshake drivers for HTTP ``CONNECT`` and SOCKS4/4a/5/5h.

Nothing here does I/O.  A handshake is driven by whoever owns the socket
(:func:`conpool._tunnel.run_handshake` on the event loops,
:func:`conpool._tunnel.run_handshake_blocking` on a blocking socket)::

    hs = proxy.handshake(target_host, target_port)
    while True:
        out = hs.data_to_send()
        if out:
            sock.sendall(out)
        if hs.done:
            break
        data = sock.recv(65536, socket.MSG_PEEK)   # look, do not take
        if not data:
            raise hs.closed()                      # a ProxyError
        used = hs.feed(data)                       # >= 1 byte of the reply
        sock.recv(used)                            # take exactly those

Peeking and then taking only what :meth:`Handshake.feed` used means the
bytes the target sends right after the proxy's reply (a server that speaks
first) stay in the kernel for the connection, and no "leftover" buffer has
to be handed from the handshake to the stream.  A driver that cannot peek
(a TLS stream to an ``https://`` proxy) asks for at most
:meth:`Handshake.wants` bytes at a time, which never reaches past the reply.

Which failures blame the target address, and which may be retried, is
decided here once per failure (:class:`ProxyError`), so that every shell
treats them alike; ``docs/proxies.md`` has the table.  Which endpoints go
through the proxy at all is :mod:`conpool._noproxy`'s.
"""

from __future__ import annotations

import base64
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Final, final
from urllib.parse import unquote

import socksio

from ._endpoint import _normalise_host
from ._errors import PoolError, describe

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_PORTS",
    "SCHEMES",
    "Handshake",
    "Proxy",
    "ProxyError",
]

#: The schemes :meth:`Proxy.parse` accepts.
SCHEMES: Final = ("http", "https", "socks5", "socks5h", "socks4", "socks4a")
#: The port of a proxy URL that names none.
DEFAULT_PORTS: Final = {
    "http": 80,
    "https": 443,
    "socks5": 1080,
    "socks5h": 1080,
    "socks4": 1080,
    "socks4a": 1080,
}

# A CONNECT reply bigger than this is not a proxy talking (RFC 9110 sets no
# limit; h11 and nginx default to 64 KiB and 8 KiB of headers).
MAX_REPLY: Final = 64 * 1024


class ProxyError(PoolError, OSError):
    """One attempt through a proxy failed: the proxy could not be reached,
    refused us (``407``, a SOCKS reply code), or broke the handshake.

    The pool wraps it in a :class:`~conpool.ConnectError` (it is one of its
    ``errors``); its text names the proxy without credentials.

    :ivar proxy: the :class:`Proxy` (``str(proxy)`` has no credentials).
    :ivar reply: what the proxy answered: an HTTP status (``407``), a SOCKS
        reply code's name (``"CONNECTION_REFUSED"``), or ``None`` when it
        answered nothing (unreachable, closed, stalled, or not a proxy).
    :ivar blames_target: the proxy reached out and the *target address*
        failed (refused, unreachable, forbidden by the proxy's rules): it
        counts against that address, which may be ejected, as a direct
        connect failure would.  Otherwise the fault is the proxy's and no
        address is blamed.
    :ivar retryable: another attempt may succeed (the proxy was down, or
        another address may work); false for a refusal that will repeat
        (wrong credentials, a proxy that does not speak the protocol).
    """

    proxy: Proxy
    reply: int | str | None
    blames_target: bool
    retryable: bool

    def __init__(
        self,
        message: str,
        *,
        proxy: Proxy,
        reply: int | str | None = None,
        blames_target: bool = False,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.proxy = proxy
        self.reply = reply
        self.blames_target = blames_target
        self.retryable = retryable

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_error,
            (type(self), self.args[0], self.proxy, self.reply, self.blames_target, self.retryable),
        )


def _rebuild_error(
    cls: type[ProxyError],
    message: str,
    proxy: Proxy,
    reply: int | str | None,
    blames_target: bool,
    retryable: bool,
) -> ProxyError:
    return cls(message, proxy=proxy, reply=reply, blames_target=blames_target, retryable=retryable)


ProxyError.__module__ = "conpool"


# --------------------------------------------------------------------------
# The Proxy value


def _redact(url: str) -> str:
    """``url`` with any user info replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" not in authority:
        return url
    tail = rest[len(authority) :]
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}***@{host}{tail}"


@final
class Proxy:
    """A proxy every connection of a pool goes through (see ``Config.proxy``).

    Build one with :meth:`parse` (``Proxy.parse("socks5://127.0.0.1:1080")``)
    or directly.  Immutable and hashable.  ``str()`` and ``repr()`` never show
    the user name or password; equality includes them.

    Schemes: ``http`` (``CONNECT``), ``https`` (``CONNECT`` over TLS to the
    proxy itself), ``socks5``, ``socks4`` (the pool resolves names, so it
    balances over every address, and names the chosen one to the proxy) and
    ``socks5h``, ``socks4a`` (the proxy resolves the name: the endpoint then
    has one "address", the name itself).

    :param scheme: one of :data:`SCHEMES`.
    :param host: the proxy's host name or IP address.
    :param port: its port, 1 to 65535; ``None`` for the scheme's default
        (80 for ``http``, 443 for ``https``, 1080 for SOCKS).
    :param username: for Basic proxy authentication (HTTP) or SOCKS5
        user/password authentication; the SOCKS4 user id.
    :param password: goes with *username* (not for SOCKS4, which has none).
    :param tls_context: for ``https`` proxies: the context that verifies the
        proxy's certificate (default: :func:`ssl.create_default_context`).
    :raises TypeError: a field of the wrong type.
    :raises ValueError: an unknown scheme, an invalid host or port, a
        password without a user name, credentials the scheme cannot carry
        (a SOCKS5 user name or password over 255 bytes, a SOCKS4 password),
        or a *tls_context* for a scheme without TLS.
    """

    __slots__ = ("_hash", "_host", "_password", "_port", "_scheme", "_tls_context", "_username")

    _scheme: str
    _host: str
    _port: int
    _username: str | None
    _password: str | None
    _tls_context: ssl.SSLContext | None
    _hash: int

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if not isinstance(scheme, str):
            raise TypeError(f"proxy scheme must be a str, got {type(scheme).__name__} {scheme!r}")
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"proxy scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        canonical, _version = _normalise_host(host, "proxy host")
        if port is None:
            port = DEFAULT_PORTS[scheme]
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"proxy port must be an int, got {type(port).__name__} {port!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"proxy port must be in 1..65535, got {port!r}")
        for field, value in (("username", username), ("password", password)):
            if value is not None and not isinstance(value, str):
                # The value itself is not shown: it may be a secret.
                raise TypeError(f"proxy {field} must be a str or None, got {type(value).__name__}")
        if password is not None and username is None:
            raise ValueError("proxy password given without a username")
        if scheme.startswith("socks4") and password is not None:
            raise ValueError(
                "proxy password: SOCKS4 has no passwords (the username is sent as its user id)"
            )
        if scheme.startswith("socks5") and username is not None:
            for field, value in (("username", username), ("password", password or "")):
                if len(value.encode()) > 255:
                    raise ValueError(f"proxy {field}: SOCKS5 allows at most 255 bytes (RFC 1929)")
            if password is None:
                password = ""
        if tls_context is not None:
            if not isinstance(tls_context, ssl.SSLContext):
                raise TypeError(
                    f"proxy tls_context must be an ssl.SSLContext or None, "
                    f"got {type(tls_context).__name__} {tls_context!r}"
                )
            if scheme != "https":
                raise ValueError(f"proxy tls_context is only for https proxies, not {scheme}")
        object.__setattr__(self, "_scheme", scheme)
        object.__setattr__(self, "_host", canonical)
        object.__setattr__(self, "_port", int(port))
        object.__setattr__(self, "_username", username)
        object.__setattr__(self, "_password", password)
        object.__setattr__(self, "_tls_context", tls_context)
        object.__setattr__(
            self,
            "_hash",
            hash(
                (
                    scheme,
                    canonical,
                    port,
                    username,
                    password,
                    None if tls_context is None else id(tls_context),
                )
            ),
        )

    @classmethod
    def parse(cls, url: str, *, tls_context: ssl.SSLContext | None = None) -> Proxy:
        """Parse ``scheme://[user[:password]@]host[:port][/]``.

        User name and password are percent-decoded (``p%40ss`` is ``p@ss``).
        An IPv6 host needs brackets (``socks5://[::1]:1080``).

        :param url: the proxy URL.
        :param tls_context: see :class:`Proxy`.
        :raises TypeError: *url* is not a str.
        :raises ValueError: the URL is malformed (the message shows it with
            its credentials masked), or a field is invalid as for
            :class:`Proxy`.
        """
        if not isinstance(url, str):
            raise TypeError(f"proxy URL must be a str, got {type(url).__name__}")
        shown = _redact(url)

        def fail(reason: str) -> ValueError:
            return ValueError(f"invalid proxy URL {shown!r}: {reason}")

        scheme, sep, rest = url.partition("://")
        if not sep:
            raise fail("the scheme is missing (as in 'socks5://127.0.0.1:1080')")
        authority, slash, path = rest.partition("/")
        if "?" in authority or "#" in authority or (slash and path):
            raise fail("a proxy URL has no path, query or fragment")
        userinfo, at, hostport = authority.rpartition("@")
        if not at:
            userinfo, hostport = "", authority
        username: str | None = None
        password: str | None = None
        if at:
            user_text, colon, pass_text = userinfo.partition(":")
            if not user_text:
                raise fail("the username is empty")
            username = unquote(user_text, errors="strict")
            password = unquote(pass_text, errors="strict") if colon else None
        if hostport.startswith("["):
            close = hostport.find("]")
            if close == -1:
                raise fail("'[' without a closing ']'")
            host, port_part = hostport[: close + 1], hostport[close + 1 :]
            if port_part and not port_part.startswith(":"):
                raise fail("unexpected text after ']'")
            port_text = port_part[1:] if port_part else None
        else:
            host, colon, port_text_ = hostport.partition(":")
            port_text = port_text_ if colon else None
            if port_text is not None and ":" in port_text:
                raise fail("an IPv6 host needs brackets, as in 'socks5://[::1]:1080'")
        if not host:
            raise fail("the host is missing")
        port: int | None = None
        if port_text is not None:
            if not (port_text.isascii() and port_text.isdigit()):
                raise fail(f"port {port_text!r} is not a decimal number")
            digits = port_text.lstrip("0") or "0"
            port = int(digits) if len(digits) <= 5 else 65536
            if not 1 <= port <= 65535:
                raise fail("port must be in 1..65535")
        try:
            return cls(
                scheme,
                host,
                port,
                username=username,
                password=password,
                tls_context=tls_context,
            )
        except ValueError as exc:
            raise fail(str(exc)) from None

    @property
    def scheme(self) -> str:
        """``"http"``, ``"https"``, ``"socks5"``, ``"socks5h"``, ``"socks4"`` or ``"socks4a"``."""
        return self._scheme

    @property
    def host(self) -> str:
        """The proxy's normalised host (no brackets)."""
        return self._host

    @property
    def port(self) -> int:
        """The proxy's port."""
        return self._port

    @property
    def username(self) -> str | None:
        """The user name, or ``None``."""
        return self._username

    @property
    def has_credentials(self) -> bool:
        """Whether a user name (and password) is sent to the proxy."""
        return self._username is not None

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """For ``https`` proxies, the context given (``None``: the default)."""
        return self._tls_context

    @property
    def remote_dns(self) -> bool:
        """Whether the proxy resolves the target's name (``socks5h``, ``socks4a``)."""
        return self._scheme in ("socks5h", "socks4a")

    @property
    def is_tls(self) -> bool:
        """Whether the pool speaks TLS to the proxy itself (``https``)."""
        return self._scheme == "https"

    def handshake(self, host: str, port: int) -> Handshake:
        """A fresh sans-I/O driver asking this proxy for a tunnel to ``host:port``.

        :param host: the target: the IP address the pool chose, or (for
            ``socks5h``/``socks4a``) the name.
        :param port: the target's port.
        """
        if self._scheme in ("http", "https"):
            return ConnectHandshake(self, host, port)
        if self._scheme.startswith("socks5"):
            return Socks5Handshake(self, host, port)
        return Socks4Handshake(self, host, port)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Proxy):
            return NotImplemented
        return (
            self._hash == other._hash
            and self._scheme == other._scheme
            and self._host == other._host
            and self._port == other._port
            and self._username == other._username
            and self._password == other._password
            and self._tls_context is other._tls_context
        )

    def __hash__(self) -> int:
        return self._hash

    if not TYPE_CHECKING:

        def __setattr__(self, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}: Proxy is immutable")

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}: Proxy is immutable")

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_proxy,
            (
                self._scheme,
                self._host,
                self._port,
                self._username,
                self._password,
                self._tls_context,
            ),
        )

    def __str__(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{host}:{self._port}"

    def __repr__(self) -> str:
        # Credentials are masked, not left out: a reader of a log should see
        # that this proxy authenticates, without seeing as whom.
        if self._username is None:
            return f"Proxy.parse({str(self)!r})"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"Proxy.parse('{self._scheme}://***@{host}:{self._port}')"


def _rebuild_proxy(
    scheme: str,
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    tls_context: ssl.SSLContext | None,
) -> Proxy:
    return Proxy(scheme, host, port, username=username, password=password, tls_context=tls_context)


Proxy.__module__ = "conpool"


# --------------------------------------------------------------------------
# Handshakes


class Handshake(ABC):
    """A sans-I/O proxy handshake: bytes to send, bytes received, done or an error.

    :ivar proxy: the proxy it talks to.
    :ivar target: ``"host:port"`` asked for (for messages).
    """

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.done = False
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        """What to send now (possibly nothing); each byte is returned once."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @abstractmethod
    def wants(self) -> int:
        """How many bytes the handshake can take next without reading past
        its end (at least 1 while not done): for a driver that cannot peek,
        a ``receive(wants())`` never takes the tunnel's bytes."""

    @abstractmethod
    def feed(self, data: bytes) -> int:
        """Take bytes received from the proxy; return how many belong to the
        handshake (at least one, unless *data* is empty or the handshake is
        done).  The rest are the tunnel's and must not be fed again.

        :raises ProxyError: the proxy refused, or does not speak the protocol.
        """

    def closed(self) -> ProxyError:
        """The proxy closed the connection before the handshake was done:
        the error to raise."""
        return self._error(
            f"{self._who()} closed the connection during the handshake",
            retryable=True,
        )

    def stalled(self, timeout: float) -> ProxyError:
        """The handshake did not finish within *timeout* seconds: the error to raise."""
        return self._error(
            f"{self._who()} did not finish the handshake within {timeout:g} s", retryable=True
        )

    def _who(self) -> str:
        return f"the proxy {self.proxy}"

    def _reply_refused(self, code: int, replies: Mapping[int, tuple[str, str, bool]]) -> ProxyError:
        """A SOCKS reply ``code`` other than success, read from ``replies``
        (name, meaning, blames the target): the error to raise.  A code that
        blames the target is retried on another address."""
        name, meaning, blames = replies.get(code, (f"{code:#04x}", "an unknown reply code", False))
        return self._error(
            f"{self._who()} could not open a tunnel to {self.target}: {name} ({meaning})",
            reply=name,
            blames_target=blames,
            retryable=blames,
        )

    def _error(
        self,
        message: str,
        *,
        reply: int | str | None = None,
        blames_target: bool = False,
        retryable: bool = False,
    ) -> ProxyError:
        return ProxyError(
            message,
            proxy=self.proxy,
            reply=reply,
            blames_target=blames_target,
            retryable=retryable,
        )


# The status line of a CONNECT reply (RFC 9112 section 4): lenient about the
# reason phrase, strict about the version and the three digits.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?\r?")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


def parse_connect_reply(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """Parse a CONNECT reply's status line and header fields (the bytes up to
    and including the blank line).

    :returns: ``(status, reason, [(lower-case name, value), ...])``.
    :raises ValueError: it is not an HTTP/1.x response head.
    """
    lines = head.split(b"\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(match[1])
    reason = (match[2] or b"").decode("latin-1").strip()
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            raise ValueError(f"not an HTTP header line: {line[:80]!r}")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return status, reason, headers


class ConnectHandshake(Handshake):
    """``CONNECT host:port HTTP/1.1``, with Basic proxy authentication when the
    proxy has a user name (RFC 9110 sections 9.3.6 and 11.7.1; RFC 7617)."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        super().__init__(proxy, host, port)
        lines = [f"CONNECT {self.target} HTTP/1.1", f"Host: {self.target}"]
        if proxy._username is not None:
            secret = f"{proxy._username}:{proxy._password or ''}".encode()
            lines.append(f"Proxy-Authorization: Basic {base64.b64encode(secret).decode()}")
        self._out += ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        self._head = bytearray()
        #: The reply's status and headers, once parsed.
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []

    def _who(self) -> str:
        return f"the HTTP proxy {self.proxy}"

    def wants(self) -> int:
        if self.done:
            return 0
        # The fewest bytes that could end the head ("\n\n", "\r\n\r\n"
        # and mixes): one after a line end or a "\n\r", two otherwise.
        tail = bytes(self._head[-2:])
        return 1 if tail.endswith(b"\n") or tail == b"\n\r" else 2

    def feed(self, data: bytes) -> int:
        if self.done or not data:
            return 0
        head = self._head
        start = max(0, len(head) - 3)
        head += data
        match = _END_OF_HEADERS.search(head, start)
        if match is None:
            if len(head) > MAX_REPLY:
                raise self._error(
                    f"{self._who()} sent a reply head over {MAX_REPLY} bytes long: "
                    "not an HTTP proxy?"
                )
            return len(data)
        end = match.end()
        used = end - (len(head) - len(data))
        del head[end:]
        try:
            status, reason, headers = parse_connect_reply(bytes(head))
        except ValueError as exc:
            raise self._error(f"{self._who()} did not answer like an HTTP proxy: {exc}") from None
        self.status, self.headers = status, headers
        if 200 <= status < 300:
            self.done = True
            return used
        raise self._refused(status, reason, headers)

    def _refused(self, status: int, reason: str, headers: list[tuple[str, str]]) -> ProxyError:
        said = f"{status} {reason}".strip()
        # 407 is the status for a proxy (RFC 9110 section 15.5.8); tinyproxy
        # 1.11 answers a CONNECT with wrong credentials 401, so both mean it.
        if status in (401, 407):
            why = (
                "the user name or password was not accepted"
                if self.proxy.has_credentials
                else "it needs a user name and password"
            )
            schemes = [
                v.split(" ", 1)[0]
                for k, v in headers
                if k in ("proxy-authenticate", "www-authenticate")
            ]
            if schemes:
                why += f" (it offers {', '.join(schemes)})"
            return self._error(
                f"{self._who()} refused the tunnel to {self.target}: {said}: {why}", reply=status
            )
        # 5xx: the proxy could not reach the target (tinyproxy says 500,
        # squid 503, others 502/504): the address failed, through the proxy.
        # 403: the proxy's rules forbid this target; another address may be
        # allowed, and a forbidden one should be ejected like a dead one.
        blames = status >= 500 or status == 403
        return self._error(
            f"{self._who()} refused the tunnel to {self.target}: {said}",
            reply=status,
            blames_target=blames,
            retryable=blames,
        )


# SOCKS5 reply codes (RFC 1928 section 6): (name, meaning, blames the target).
# "General failure" is what microsocks and dante say when connecting to the
# target failed for a reason without a code of its own, so it blames the
# target too; a proxy that fails everything still fails every address, and
# the pool's max_ejected_share keeps it from ejecting them all.
_SOCKS5_REPLIES: Final[dict[int, tuple[str, str, bool]]] = {
    0x01: ("GENERAL_SERVER_FAILURE", "general failure", True),
    0x02: ("CONNECTION_NOT_ALLOWED_BY_RULESET", "the proxy's rules forbid this target", True),
    0x03: ("NETWORK_UNREACHABLE", "the target's network is unreachable", True),
    0x04: ("HOST_UNREACHABLE", "the target host is unreachable", True),
    0x05: ("CONNECTION_REFUSED", "the target refused the connection", True),
    0x06: ("TTL_EXPIRED", "TTL expired", True),
    0x07: ("COMMAND_NOT_SUPPORTED", "the proxy does not support CONNECT", False),
    0x08: ("ADDRESS_TYPE_NOT_SUPPORTED", "the proxy does not support this address type", False),
}
_SOCKS4_REPLIES: Final[dict[int, tuple[str, str, bool]]] = {
    0x5B: ("REQUEST_REJECTED_OR_FAILED", "rejected, or connecting to the target failed", True),
    0x5C: ("CONNECTION_FAILED", "the proxy could not reach our identd", False),
    0x5D: ("AUTHENTICATION_FAILED", "identd did not confirm the user id", False),
}


class Socks5Handshake(Handshake):
    """SOCKS5 (RFC 1928) with no authentication or user/password (RFC 1929),
    framed by :mod:`socksio`.  ``socks5h`` sends the name, ``socks5`` the IP."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        super().__init__(proxy, host, port)
        self._conn = socksio.SOCKS5Connection()
        self._method = (
            socksio.SOCKS5AuthMethod.USERNAME_PASSWORD
            if proxy.has_credentials
            else socksio.SOCKS5AuthMethod.NO_AUTH_REQUIRED
        )
        self._conn.send(socksio.SOCKS5AuthMethodsRequest([self._method]))
        self._pull()
        self._buf = bytearray()
        self._stage = "method"

    def _who(self) -> str:
        return f"the SOCKS5 proxy {self.proxy}"

    def wants(self) -> int:
        return 0 if self.done else self._need() - len(self._buf)

    def _pull(self) -> None:
        self._out += self._conn.data_to_send()

    def _need(self) -> int:
        """How many bytes the message being read has in all (as far as known)."""
        if self._stage in ("method", "auth"):
            return 2
        buf = self._buf
        if len(buf) < 4:
            return 5  # at least a header and one byte of address
        atype = buf[3]
        if atype == 0x01:
            return 4 + 4 + 2
        if atype == 0x04:
            return 4 + 16 + 2
        if atype == 0x03:
            return 4 + 1 + buf[4] + 2 if len(buf) >= 5 else 5
        raise self._error(f"{self._who()} sent a reply with an unknown address type {atype:#04x}")

    def feed(self, data: bytes) -> int:
        if self.done or not data:
            return 0
        used = 0
        while used < len(data) and not self.done:
            need = self._need()
            take = min(need - len(self._buf), len(data) - used)
            self._buf += data[used : used + take]
            used += take
            if self._stage == "command" and len(self._buf) >= 2 and self._buf[1] != 0:
                # A refusal: its code is all that matters, and some proxies
                # hang up without sending the rest of the reply.
                self._step(bytes(self._buf))
            if len(self._buf) == self._need():
                message, self._buf = bytes(self._buf), bytearray()
                self._step(message)
        return used

    def _step(self, message: bytes) -> None:
        if message[0] != (0x01 if self._stage == "auth" else 0x05):
            raise self._error(f"{self._who()} did not answer like a SOCKS5 proxy: {message!r}")
        if self._stage == "method":
            if message[1] == 0xFF:
                why = (
                    "it does not accept user/password authentication"
                    if self.proxy.has_credentials
                    else "it needs a user name and password"
                )
                raise self._error(
                    f"{self._who()} accepts none of our methods: {why}",
                    reply="NO_ACCEPTABLE_METHODS",
                )
            reply = self._conn.receive_data(message)
            assert isinstance(reply, socksio.SOCKS5AuthReply)
            if reply.method != self._method:
                raise self._error(
                    f"{self._who()} chose authentication {reply.method.name}, "
                    f"which we did not offer"
                )
            if self._method == socksio.SOCKS5AuthMethod.USERNAME_PASSWORD:
                proxy = self.proxy
                assert proxy._username is not None
                self._conn.send(
                    socksio.SOCKS5UsernamePasswordRequest(
                        proxy._username.encode(), (proxy._password or "").encode()
                    )
                )
                self._stage = "auth"
            else:
                self._command()
        elif self._stage == "auth":
            answer = self._conn.receive_data(message)
            assert isinstance(answer, socksio.socks5.SOCKS5UsernamePasswordReply)
            if not answer.success:
                raise self._error(
                    f"{self._who()} rejected the user name and password", reply="AUTH_FAILED"
                )
            self._command()
        else:
            code = message[1]
            if code == 0x00:
                self.done = True
                return
            raise self._reply_refused(code, _SOCKS5_REPLIES)
        self._pull()

    def _command(self) -> None:
        self._conn.send(
            socksio.SOCKS5CommandRequest.from_address(
                socksio.SOCKS5Command.CONNECT, (self.host, self.port)
            )
        )
        self._stage = "command"


class Socks4Handshake(Handshake):
    """SOCKS4 (an IPv4 address) and SOCKS4a (a name the proxy resolves),
    framed by :mod:`socksio`; the proxy's user name is the user id."""

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        super().__init__(proxy, host, port)
        user_id = (proxy._username or "").encode()
        self._conn = socksio.SOCKS4Connection(user_id)
        is_ipv4 = ":" not in host and host.replace(".", "").isdigit()
        if ":" in host or (not is_ipv4 and not proxy.remote_dns):
            # An IPv6 address can never go through SOCKS4 (nor a name
            # through socks4 without the "a"): the address is blamed, so a
            # dual-stack name soon ejects it, and the dial goes on to the
            # next address (no byte was sent: the retry costs nothing).
            raise self._error(
                f"{self._who()} cannot carry the target {self.target}: "
                "SOCKS4 knows only IPv4 addresses (use socks5, or socks4a for names)",
                blames_target=True,
                retryable=True,
            )
        request: socksio.SOCKS4Request | socksio.SOCKS4ARequest
        if is_ipv4:
            request = socksio.SOCKS4Request.from_address(
                socksio.SOCKS4Command.CONNECT, (host, port), user_id
            )
        else:
            request = socksio.SOCKS4ARequest.from_address(
                socksio.SOCKS4Command.CONNECT, (host, port), user_id
            )
        self._conn.send(request)
        self._out += self._conn.data_to_send()
        self._buf = bytearray()

    def _who(self) -> str:
        return f"the {self.proxy.scheme.upper()} proxy {self.proxy}"

    def wants(self) -> int:
        return 0 if self.done else 8 - len(self._buf)

    def feed(self, data: bytes) -> int:
        if self.done or not data:
            return 0
        take = min(8 - len(self._buf), len(data))
        self._buf += data[:take]
        if len(self._buf) < 8:
            return take
        reply = bytes(self._buf)
        if reply[0] != 0x00:
            raise self._error(f"{self._who()} did not answer like a SOCKS4 proxy: {reply!r}")
        code = reply[1]
        if code == 0x5A:
            self.done = True
            return take
        raise self._reply_refused(code, _SOCKS4_REPLIES)


def unreachable(proxy: Proxy, exc: BaseException) -> ProxyError:
    """The error for a proxy that could not be connected to (refused,
    unreachable, timed out): retried, blames no target address."""
    return ProxyError(
        f"the proxy {proxy} is unreachable: {describe(exc)}", proxy=proxy, retryable=True
    )
