"""Endpoints and TLS settings: the pool key, parsed, normalised and validated.

An :class:`Endpoint` is built once and then hashed and compared on every
acquire, so all the work happens in the constructor: the host is normalised to
one canonical spelling (so ``"Pool.Test."`` and ``"pool.test"`` share
connections), the hash is computed once, and equality starts with an identity
check.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import FrozenInstanceError
from typing import TYPE_CHECKING, Literal, NoReturn, final

# ``idna`` is a dependency of anyio, so it is always installed next to us. We use
# it rather than the stdlib's "idna" codec because the codec implements IDNA 2003,
# which maps "straße" to "strasse", a different registered domain. IDNA 2008 with
# UTS #46 mapping is what browsers, curl and anyio's own connect_tcp() use, so the
# name we key the pool by is the name anyio would have dialled.
import idna

__all__ = ["TLS", "Endpoint"]

# RFC 1035 section 2.3.4: 63 octets per label, 255 per name on the wire, which is
# 253 characters in dotted text form without the trailing dot.
_MAX_LABEL = 63
_MAX_NAME = 253

# Letters, digits and hyphens per RFC 952/1123, plus the underscore: it is not a
# valid host name character in theory, but SRV/DKIM-style names ("_dmarc.x") and
# some internal zones use it, and getaddrinfo() resolves such names happily.
# Leading and trailing hyphens are accepted for the same reason: rejecting names
# the resolver would accept only makes the pool stricter than the network.
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_ZONE_RE = re.compile(r"[A-Za-z0-9_.-]+")
_IPV4_CHARS_RE = re.compile(r"[0-9.]+")

# struct sockaddr_un's sun_path is 108 bytes on Linux, and the kernel wants
# room for the terminating NUL of a path-named socket.
_MAX_UNIX_PATH = 107
_UNIX_PREFIX = "unix:"


def _check_unix_path(value: object) -> str:
    """Return a Unix socket path as a plain str, or raise naming ``path``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"path must be a str, got {type(value).__name__} {value!r}")
    path = str.__str__(value)
    if not path:
        raise ValueError("path must not be empty, got ''")
    if "\0" in path:
        # A leading NUL names a Linux abstract socket, any other NUL would be
        # cut off by the kernel: both would dial something other than the
        # path written.
        raise ValueError(f"invalid path {path!r}: a NUL character is not allowed")
    try:
        size = len(os.fsencode(path))
    except UnicodeError as exc:
        raise ValueError(
            f"invalid path {path!r}: not encodable for the file system ({exc})"
        ) from None
    if size > _MAX_UNIX_PATH:
        raise ValueError(
            f"invalid path {path!r}: {size} bytes, "
            f"a Unix socket path holds at most {_MAX_UNIX_PATH}"
        )
    return path


def _fail(field: str, value: str, reason: str) -> NoReturn:
    raise ValueError(f"invalid {field} {value!r}: {reason}")


def _check_zone(field: str, text: str, address: ipaddress.IPv6Address) -> None:
    # Zone ids name an interface ("eth0", "eth0.100", "12"); anything else, "]"
    # in particular, would make str(endpoint) impossible to parse back.
    if address.scope_id is not None and _ZONE_RE.fullmatch(address.scope_id) is None:
        _fail(field, text, "an IPv6 zone id may hold only letters, digits, '.', '-' and '_'")


def _normalise_host(value: object, field: str) -> tuple[str, Literal[4, 6] | None]:
    """Return the canonical spelling of a host name or IP literal and its IP version.

    Shared by :class:`Endpoint` (``field="host"``) and :class:`TLS`
    (``field="server_name"``) so both spell a name the same way.
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__} {value!r}")
    # A str subclass could override methods we rely on below; work on a plain str.
    text = str.__str__(value)
    if not text:
        raise ValueError(f"{field} must not be empty, got {text!r}")
    # isprintable() is False for every Unicode whitespace and control, format,
    # surrogate and unassigned character except the ASCII space. Rejecting them
    # instead of stripping them means "pool.test\n" from a config file is an
    # error, not a silently different key.
    if " " in text or not text.isprintable():
        _fail(field, text, "whitespace and control characters are not allowed")

    if text.startswith("[") or text.endswith("]"):
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else None
        if inner is not None:
            try:
                bracketed = ipaddress.ip_address(inner)
            except ValueError:
                pass
            else:
                if isinstance(bracketed, ipaddress.IPv6Address):
                    _check_zone(field, text, bracketed)
                    return str(bracketed), 6
        _fail(field, text, "brackets may only enclose an IPv6 address, as in '[::1]'")

    # A single trailing dot marks a fully qualified name; "pool.test." and
    # "pool.test" are the same host, so they must be the same key.
    fqdn = text.endswith(".")
    name = text[:-1] if fqdn else text
    if not name:
        _fail(field, text, "the name is empty")

    # ip_address() raises twice (IPv4, then IPv6) for every name; only try it
    # on text that could be an address, since most hosts are names.
    if ":" in name or _IPV4_CHARS_RE.fullmatch(name) is not None:
        try:
            # Canonical text form: "::1" for "0:0::1", lower-case hex, dotted quad.
            # IPv6 zone ids ("fe80::1%eth0") are kept as written: link-local
            # addresses mean nothing without one, and interface names are
            # case-sensitive.
            address = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            if isinstance(address, ipaddress.IPv6Address):
                _check_zone(field, text, address)
            return str(address), address.version

    if ":" in name:
        _fail(
            field,
            text,
            "':' is only allowed in an IPv6 address; for 'host:port' use Endpoint.parse()",
        )

    if name.isascii():
        labels = name.lower().split(".")
    else:
        try:
            # UTS #46 mapping: case folding, NFKC, and the ideographic full stops
            # (U+3002, U+FF0E) that IMEs produce in place of ".".
            mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            _fail(field, text, f"not a valid internationalised name ({exc})")
        labels = mapped.split(".")
        if mapped.endswith(".") and not fqdn and len(labels) > 1:
            # A Unicode full stop became the one trailing dot we allow.
            labels.pop()

    encoded: list[str] = []
    for label in labels:
        if not label:
            _fail(field, text, "empty label (two dots in a row, or a leading dot)")
        if not label.isascii():
            try:
                label = idna.alabel(label).decode("ascii")
            except idna.IDNAError as exc:
                _fail(field, text, f"not a valid internationalised name ({exc})")
        if len(label) > _MAX_LABEL:
            _fail(
                field,
                text,
                f"label {label!r} is {len(label)} bytes long, the limit is {_MAX_LABEL}",
            )
        if _LABEL_RE.fullmatch(label) is None:
            bad = next(ch for ch in label if _LABEL_RE.fullmatch(ch) is None)
            _fail(
                field,
                text,
                f"{bad!r} is not allowed in a host name (letters, digits, '-' and '_' are)",
            )
        encoded.append(label)

    canonical = ".".join(encoded)
    if len(canonical) > _MAX_NAME:
        _fail(field, text, f"the name is {len(canonical)} bytes long, the limit is {_MAX_NAME}")
    # No top-level domain is all digits (RFC 3696 section 2), and getaddrinfo()
    # reads names like "127.1" or "2130706433" as IPv4 addresses in legacy
    # notations. Accepting them would give one address two pool keys, one of
    # them sent to the resolver, so only the dotted-quad form is an address.
    if _DIGITS_RE.fullmatch(encoded[-1]) is not None:
        _fail(field, text, "looks like an IPv4 address but is not in dotted-quad form (a.b.c.d)")
    return canonical, None


def _check_alpn(value: object) -> tuple[str, ...]:
    # A str is a sequence too: "h2" would silently become ("h", "2").
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"alpn must be a tuple of str, got {type(value).__name__} {value!r}")
    protocols = tuple(value)
    for protocol in protocols:
        if not isinstance(protocol, str):
            raise TypeError(
                f"alpn protocols must be str, got {type(protocol).__name__} {protocol!r}"
            )
        # ssl.SSLContext.set_alpn_protocols() encodes as ASCII and RFC 7301
        # section 3.1 limits an identifier to 1..255 bytes; checking here reports
        # the mistake at construction rather than at the first handshake.
        if not protocol.isascii():
            raise ValueError(f"alpn protocol {protocol!r} must be ASCII")
        if not 1 <= len(protocol) <= 255:
            raise ValueError(
                f"alpn protocol {protocol!r} must be 1 to 255 bytes long, got {len(protocol)}"
            )
    return protocols


@functools.cache
def _default_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    # Created lazily because loading the system CA store costs milliseconds that
    # an importer who never uses TLS should not pay, and cached per ALPN list so
    # that equal TLS values hand out the very same context. A race between two
    # threads at most creates one spare context; both are configured the same.
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@final
class TLS:
    """TLS settings for an :class:`Endpoint`; part of the pool key.

    ``TLS()`` verifies certificates and host names with
    :func:`ssl.create_default_context`. Two ``TLS`` values are equal when they
    have the same ``server_name`` and ``alpn`` and either both use the default
    context or both use the *same* context object: contexts have no meaningful
    value equality, so they compare by identity. In particular ``TLS() ==
    TLS()``, which is what lets ``Endpoint("pool.test", 443, tls=TLS())`` built
    in two places share connections.

    :param context: the context for the handshake; ``None`` uses a shared default
        context with certificate and host name verification on.
    :param server_name: the name to send in SNI and to verify the certificate
        against; normalised like a host name. ``None`` means the endpoint's host
        (never the IP address that was dialled).
    :param alpn: ALPN protocol identifiers, most preferred first, e.g.
        ``("h2", "http/1.1")``. A list is accepted and stored as a tuple. When
        *context* is given they are set on it with
        :meth:`ssl.SSLContext.set_alpn_protocols`, so do not share one context
        between ``TLS`` values that want different protocols.
    :raises TypeError: if *context* is not an :class:`ssl.SSLContext`,
        *server_name* is not a str or *alpn* is not a sequence of str.
    :raises ValueError: if *server_name* is not a valid host name or IP address,
        or an ALPN identifier is empty, not ASCII or longer than 255 bytes.
    """

    __slots__ = ("_alpn", "_context", "_hash", "_server_name")

    _context: ssl.SSLContext | None
    _server_name: str | None
    _alpn: tuple[str, ...]
    _hash: int

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        alpn: tuple[str, ...] = (),
    ) -> None:
        if context is not None and not isinstance(context, ssl.SSLContext):
            raise TypeError(
                f"context must be an ssl.SSLContext or None, "
                f"got {type(context).__name__} {context!r}"
            )
        name = None if server_name is None else _normalise_host(server_name, "server_name")[0]
        protocols = _check_alpn(alpn)
        if context is not None and protocols:
            context.set_alpn_protocols(protocols)
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "_server_name", name)
        object.__setattr__(self, "_alpn", protocols)
        # id(): identity is what equality uses, and the context is kept alive by
        # this object, so its id cannot be reused while we exist.
        object.__setattr__(
            self, "_hash", hash((None if context is None else id(context), name, protocols))
        )

    @property
    def context(self) -> ssl.SSLContext | None:
        """The context that was passed in, or ``None`` for the default."""
        return self._context

    @property
    def server_name(self) -> str | None:
        """The normalised server name, or ``None`` to use the endpoint's host."""
        return self._server_name

    @property
    def alpn(self) -> tuple[str, ...]:
        """ALPN protocol identifiers, most preferred first."""
        return self._alpn

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The context to perform the handshake with, ALPN protocols applied.

        The given context, or a default one created on first use and shared by
        every ``TLS`` value with the same ``alpn``.
        """
        if self._context is not None:
            return self._context
        return _default_context(self._alpn)

    def server_name_for(self, host: str) -> str:
        """Return the name to send in SNI and to check the certificate against.

        :param host: the endpoint's (normalised) host. When it is an IP literal
            and no ``server_name`` was given, the certificate is checked against
            that IP address, which is what connecting to an IP over TLS asks for.
        """
        return self._server_name or host

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, TLS):
            return NotImplemented
        return (
            self._hash == other._hash
            and self._context is other._context
            and self._server_name == other._server_name
            and self._alpn == other._alpn
        )

    def __hash__(self) -> int:
        return self._hash

    # Hidden from type checkers, which would otherwise take a __setattr__ as
    # permission to assign any attribute and stop flagging writes to properties.
    if not TYPE_CHECKING:

        def __setattr__(self, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}: TLS is immutable")

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}: TLS is immutable")

    def __reduce__(
        self,
    ) -> tuple[type[TLS], tuple[ssl.SSLContext | None, str | None, tuple[str, ...]]]:
        return (TLS, (self._context, self._server_name, self._alpn))

    def __repr__(self) -> str:
        parts = []
        if self._context is not None:
            parts.append(f"context={self._context!r}")
        if self._server_name is not None:
            parts.append(f"server_name={self._server_name!r}")
        if self._alpn:
            parts.append(f"alpn={self._alpn!r}")
        return f"TLS({', '.join(parts)})"


@final
class Endpoint:
    """Where to connect: a host, a port and optional TLS settings. The pool key.

    Immutable and hashable; two endpoints are equal when their normalised host,
    port and :class:`TLS` settings are equal, and then share connections.

    The host is normalised once, here:

    - IP literals take their canonical text form (``"::1"``, ``"127.0.0.1"``);
      IPv6 may be given with or without brackets. IPv6 zone ids
      (``"fe80::1%eth0"``) are kept, case and all.
    - Names are lower-cased, lose one trailing dot, and are IDNA-encoded
      (IDNA 2008 with UTS #46 mapping), so ``"Bücher.Example."`` becomes
      ``"xn--bcher-kva.example"``. Labels may hold letters, digits, ``-`` and
      ``_``, at most 63 bytes each and 253 for the whole name.
    - A name whose last label is all digits (``"127.1"``) is rejected: resolvers
      read it as an IPv4 address in a legacy notation.

    :param host: a DNS name or an IP address.
    :param port: a TCP port, 1 to 65535.
    :param tls: TLS settings, or ``None`` for plain TCP.
    :raises TypeError: if *host* is not a str, *port* is not an int (a bool is
        not a port), or *tls* is not a :class:`TLS` or ``None``.
    :raises ValueError: if *host* is empty, contains whitespace or control
        characters, has an empty label, a label over 63 bytes, a name over 253
        bytes or a character not allowed in a host name, or *port* is outside
        1..65535.
    """

    __slots__ = ("_hash", "_host", "_ip_version", "_path", "_port", "_tls")

    _host: str
    _port: int
    _tls: TLS | None
    _ip_version: Literal[4, 6] | None
    _path: str | None
    _hash: int

    def __init__(self, host: str, port: int, *, tls: TLS | None = None) -> None:
        canonical, version = _normalise_host(host, "host")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, got {type(port).__name__} {port!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if tls is not None and not isinstance(tls, TLS):
            raise TypeError(f"tls must be a conpool.TLS or None, got {type(tls).__name__} {tls!r}")
        port = int(port)  # an IntEnum member would otherwise leak into str()
        object.__setattr__(self, "_host", canonical)
        object.__setattr__(self, "_port", port)
        object.__setattr__(self, "_tls", tls)
        object.__setattr__(self, "_ip_version", version)
        object.__setattr__(self, "_path", None)
        # Computed once: the pool hashes the endpoint on every acquire.
        object.__setattr__(self, "_hash", hash((canonical, port, tls)))

    @classmethod
    def unix(cls, path: str, *, tls: TLS | None = None) -> Endpoint:
        """A Unix domain socket endpoint: redis, PostgreSQL, Docker, a local proxy.

        ``str(endpoint)`` is ``"unix:" + path``, which :meth:`parse` reads back;
        :attr:`path` is the path, :attr:`host` is the path too (it is the
        endpoint's one address, in stats and traces) and :attr:`port` is 0.
        The path is dialled as written: a relative path is relative to the
        working directory at each connect.

        :param path: the socket's file system path (a str or a path-like).
        :param tls: TLS over the socket; its ``server_name`` must then be
            given, since there is no host name to check the certificate against.
        :raises TypeError: if *path* is not a str (or path-like), or *tls* is
            not a :class:`TLS` or ``None``.
        :raises ValueError: if *path* is empty, contains a NUL character or is
            longer than a Unix socket address holds (107 bytes), or *tls* has
            no ``server_name``.
        """
        checked = _check_unix_path(path)
        if tls is not None:
            if not isinstance(tls, TLS):
                raise TypeError(
                    f"tls must be a conpool.TLS or None, got {type(tls).__name__} {tls!r}"
                )
            if tls.server_name is None:
                raise ValueError(
                    f"tls for the Unix socket {checked!r} needs a server_name: "
                    "there is no host name to verify the certificate against"
                )
        self = object.__new__(cls)
        object.__setattr__(self, "_host", checked)
        object.__setattr__(self, "_port", 0)
        object.__setattr__(self, "_tls", tls)
        object.__setattr__(self, "_ip_version", None)
        object.__setattr__(self, "_path", checked)
        # Port 0 never belongs to a TCP endpoint, so (path, 0) cannot equal one.
        object.__setattr__(self, "_hash", hash((checked, 0, tls)))
        return self

    @classmethod
    def parse(cls, text: str, *, tls: TLS | None = None) -> Endpoint:
        """Parse ``"host:port"`` or ``"unix:PATH"``, the forms :func:`str` produces.

        Accepts ``"pool.test:8080"``, ``"127.0.0.1:80"`` and ``"[::1]:443"``;
        an IPv6 address needs its brackets, since its colons would otherwise be
        ambiguous with the port separator.  ``"unix:/run/redis.sock"`` is
        :meth:`unix` of the path after the prefix, except that ``"unix:"``
        followed by digits only stays a host named ``unix`` with a port (use
        :meth:`unix` for a socket path made of digits).

        :param text: the address to parse.
        :param tls: TLS settings for the endpoint.
        :raises TypeError: if *text* is not a str.
        :raises ValueError: if *text* is a URL (``"https://example.com"``: the
            message names the scheme and the ``host:port`` to give instead), the
            port is missing or not a decimal number, an IPv6 address lacks its
            brackets, or the host or port is invalid as for :class:`Endpoint`.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"Endpoint.parse() needs a 'host:port' str, got {type(text).__name__} {text!r}"
            )
        if text.startswith(_UNIX_PREFIX):
            rest = text[len(_UNIX_PREFIX) :]
            if not (rest.isascii() and rest.isdigit()):
                return cls.unix(rest, tls=tls)
        if "://" in text:
            _reject_url(text)
        if text.startswith("["):
            close = text.find("]")
            if close == -1:
                raise ValueError(f"invalid 'host:port' {text!r}: '[' without a closing ']'")
            host, rest = text[: close + 1], text[close + 1 :]
            if not rest.startswith(":"):
                raise ValueError(
                    f"invalid 'host:port' {text!r}: the port is missing after the host"
                )
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f"invalid 'host:port' {text!r}: the port is missing")
            if ":" in host:
                raise ValueError(
                    f"invalid 'host:port' {text!r}: an IPv6 host needs brackets, as in '[::1]:443'"
                )
        if not port_text:
            raise ValueError(f"invalid 'host:port' {text!r}: the port is missing")
        # int() alone would also take " 80", "+80", "8_0" and non-ASCII digits.
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(
                f"invalid 'host:port' {text!r}: port {port_text!r} is not a decimal number"
            )
        digits = port_text.lstrip("0") or "0"
        # Checked before int() so that a huge number cannot hit the int/str
        # conversion limit and fail with an unrelated message.
        port = int(digits) if len(digits) <= 5 else 65536
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid 'host:port' {text!r}: port must be in 1..65535")
        return cls(host, port, tls=tls)

    @property
    def host(self) -> str:
        """The normalised host: a lower-case ASCII name or an IP address, no
        brackets; for a Unix socket endpoint, its path."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; 0 for a Unix socket endpoint."""
        return self._port

    @property
    def path(self) -> str | None:
        """The socket path of a Unix socket endpoint; ``None`` for TCP."""
        return self._path

    @property
    def is_unix(self) -> bool:
        """Whether this is a Unix domain socket endpoint."""
        return self._path is not None

    @property
    def tls(self) -> TLS | None:
        """TLS settings, or ``None`` for plain TCP."""
        return self._tls

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IP literal, dialled directly without a resolver."""
        return self._ip_version is not None

    @property
    def ip_version(self) -> Literal[4, 6] | None:
        """4 or 6 for an IP literal host, ``None`` for a name."""
        return self._ip_version

    @property
    def server_name(self) -> str | None:
        """The name for SNI and certificate checks, or ``None`` without TLS."""
        if self._tls is None:
            return None
        return self._tls.server_name_for(self._host)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Endpoint):
            return NotImplemented
        return (
            self._hash == other._hash
            and self._port == other._port
            and self._host == other._host
            and self._tls == other._tls
        )

    def __hash__(self) -> int:
        return self._hash

    # Hidden from type checkers, which would otherwise take a __setattr__ as
    # permission to assign any attribute and stop flagging writes to properties.
    if not TYPE_CHECKING:

        def __setattr__(self, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}: Endpoint is immutable")

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}: Endpoint is immutable")

    def __reduce__(self) -> tuple[object, tuple[str, int, TLS | None] | tuple[str, TLS | None]]:
        if self._path is not None:
            return (_rebuild_unix, (self._path, self._tls))
        return (_rebuild_endpoint, (self._host, self._port, self._tls))

    def __str__(self) -> str:
        if self._path is not None:
            return _UNIX_PREFIX + self._path
        if self._ip_version == 6:
            return f"[{self._host}]:{self._port}"
        return f"{self._host}:{self._port}"

    def __repr__(self) -> str:
        if self._path is not None:
            tls = "" if self._tls is None else f", tls={self._tls!r}"
            return f"Endpoint.unix({self._path!r}{tls})"
        if self._tls is None:
            return f"Endpoint({self._host!r}, {self._port!r})"
        return f"Endpoint({self._host!r}, {self._port!r}, tls={self._tls!r})"


# Where a URL's scheme implies a port, the suggestion in the error can name it.
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "redis": 6379, "rediss": 6379}
_TLS_SCHEMES = frozenset({"https", "wss", "rediss"})


def _reject_url(text: str) -> NoReturn:
    """Fail on ``scheme://...`` with the ``host:port`` form the caller meant.

    Without this, ``rpartition(":")`` reads "https://example.com" as the host
    "https" and the port "//example.com", an error that names neither the
    mistake nor the fix.
    """
    scheme = text.partition("://")[0]
    try:
        parts = urllib.parse.urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    port = port or _DEFAULT_PORTS.get(scheme.lower())
    if host and port:
        netloc = f"[{host}]" if ":" in host else host
        hint = f"'{netloc}:{port}'"
        if scheme.lower() in _TLS_SCHEMES:
            hint += ", with tls=conpool.TLS()"
    else:
        hint = "'host:port'"
    raise ValueError(
        f"invalid 'host:port' {text!r}: a URL is not accepted (scheme {scheme!r}); "
        f"give the host and port, as in {hint}"
    )


def _rebuild_endpoint(host: str, port: int, tls: TLS | None) -> Endpoint:
    # pickle and copy cannot pass keyword arguments, and tls is keyword-only.
    return Endpoint(host, port, tls=tls)


def _rebuild_unix(path: str, tls: TLS | None) -> Endpoint:
    return Endpoint.unix(path, tls=tls)


TLS.__module__ = "conpool"
Endpoint.__module__ = "conpool"
