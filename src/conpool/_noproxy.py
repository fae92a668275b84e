"""Which endpoints go through the proxy: ``no_proxy`` matching, and the
proxy environment variables read as httpx reads them (pure, no I/O)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from ._endpoint import _normalise_host
from ._proxy import Proxy

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["EnvironmentProxies", "NoProxy"]


# --------------------------------------------------------------------------
# no_proxy


class NoProxy:
    """The compiled ``no_proxy`` list: which endpoints bypass the proxy.

    httpx's rules for ``NO_PROXY`` (which follow curl's), plus CIDRs:

    - ``*`` bypasses the proxy for every endpoint;
    - ``example.com`` matches that name and every name under it;
    - ``.example.com`` (or ``*.example.com``) matches only names under it;
    - ``localhost`` matches only itself;
    - an IP address matches an endpoint whose host is that IP literal, and a
      CIDR (``10.0.0.0/8``, ``fd00::/8``) one whose host is inside it (the
      endpoint's host, never the addresses a name resolves to: the decision
      is made before resolving, as in httpx);
    - any entry may end in ``:port`` (``[::1]:8080`` for IPv6) to match only
      that port, and may start with ``scheme://``, which is ignored (a
      TCP pool has no scheme).

    Matching is case-insensitive; names are normalised as endpoint hosts are.

    :param entries: the entries, as in ``Config.no_proxy``.
    :raises TypeError: *entries* is a str, or holds something else than str.
    :raises ValueError: an entry that is none of the forms above, named by
        its position.
    """

    __slots__ = ("_all", "_exact", "_networks", "_suffixes", "entries")

    def __init__(self, entries: Sequence[str] | Iterable[str]) -> None:
        if isinstance(entries, str | bytes):
            raise TypeError(
                "no_proxy must be a sequence of str (a str would be read letter by letter); "
                "split a NO_PROXY value on ','"
            )
        if not isinstance(entries, Iterable):
            raise TypeError(
                f"no_proxy must be a sequence of str, got {type(entries).__name__} {entries!r}"
            )
        self.entries: tuple[str, ...] = tuple(entries)
        self._all = False
        # (name, port or None); suffixes are "sub.example" without the dot.
        self._exact: set[tuple[str, int | None]] = set()
        self._suffixes: list[tuple[str, bool, int | None]] = []  # (name, also_itself, port)
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for index, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise TypeError(
                    f"no_proxy[{index}] must be a str, got {type(entry).__name__} {entry!r}"
                )
            try:
                self._add(entry.strip())
            except ValueError as exc:
                raise ValueError(f"no_proxy[{index}] {entry!r}: {exc}") from None

    def _add(self, text: str) -> None:
        if not text:
            raise ValueError("empty entry")
        if text == "*":
            self._all = True
            return
        if "://" in text:
            text = text.split("://", 1)[1].rstrip("/")
        host, port = _split_port(text)
        if "/" in host:
            try:
                network = ipaddress.ip_network(host.strip("[]"), strict=False)
            except ValueError:
                raise ValueError("not a valid CIDR (as in '10.0.0.0/8')") from None
            self._networks.append((network, port))
            return
        subdomains_only = False
        if host.startswith("*."):
            host, subdomains_only = host[2:], True
        elif host.startswith("."):
            host, subdomains_only = host[1:], True
        name, version = _normalise_host(host, "host")
        if version is not None or name == "localhost":
            self._exact.add((name, port))
        else:
            self._suffixes.append((name, not subdomains_only, port))

    @property
    def bypass_all(self) -> bool:
        """Whether ``*`` is in the list."""
        return self._all

    def __bool__(self) -> bool:
        return bool(self.entries)

    def matches(self, endpoint: Endpoint) -> bool:
        """Whether *endpoint* bypasses the proxy."""
        return self.matches_host(endpoint.host, endpoint.port)

    def matches_host(self, host: str, port: int) -> bool:
        """Whether the normalised *host* (an :class:`~conpool.Endpoint`'s) and
        *port* bypass the proxy."""
        if self._all:
            return True
        exact = self._exact
        if (host, None) in exact or (host, port) in exact:
            return True
        for name, itself, want in self._suffixes:
            if want is not None and want != port:
                continue
            if (itself and host == name) or host.endswith("." + name):
                return True
        if self._networks and (":" in host or host[-1:].isdigit()):
            try:
                ip = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                return False
            for network, want in self._networks:
                if (want is None or want == port) and ip.version == network.version:
                    if ip in network:
                        return True
        return False

    def __repr__(self) -> str:
        return f"NoProxy({list(self.entries)!r})"


def _split_port(text: str) -> tuple[str, int | None]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); a bare IPv6 address
    (``::1``, ``fd00::/8``) has no port."""
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise ValueError("'[' without a closing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest.startswith("/"):  # "[fd00::]/8"
            host, rest = host + rest, ""
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        return host, _port(rest[1:])
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, _port(port_text)
    return text, None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:6]) <= 65535:
        raise ValueError(f"port {text!r} is not in 1..65535")
    return int(text)


# --------------------------------------------------------------------------
# The environment (for the httpx transports' trust_env)


class EnvironmentProxies:
    """``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` read as
    httpx reads them (``urllib.request.getproxies()``'s rules: lower-case
    names win over upper-case ones, an empty value unsets, ``HTTP_PROXY`` is
    ignored when ``REQUEST_METHOD`` says this is a CGI script; a value
    without a scheme means ``http://``; ``NO_PROXY=*`` means no proxy at all).

    :ivar http: for plain-text endpoints (``HTTP_PROXY``), or ``None``.
    :ivar https: for TLS endpoints (``HTTPS_PROXY``), or ``None``.
    :ivar all: for either when the specific one is unset (``ALL_PROXY``).
    :ivar no_proxy: ``NO_PROXY`` split on ``,`` (blank entries dropped),
        for ``Config.no_proxy``.
    """

    __slots__ = ("all", "http", "https", "no_proxy")

    def __init__(self, environ: Mapping[str, str]) -> None:
        found: dict[str, str] = {}
        # Two passes, as urllib does: any case first, then lower case only,
        # so that http_proxy beats HTTP_PROXY whatever the order.
        for name, value in environ.items():
            lower = name.lower()
            if value and lower.endswith("_proxy"):
                found[lower[:-6]] = value
        if "REQUEST_METHOD" in environ:
            # CGI: HTTP_PROXY may come from the client's "Proxy:" header
            # (httpoxy, CVE-2016-5385).
            found.pop("http", None)
        for name, value in environ.items():
            if name.endswith("_proxy"):
                key = name.lower()[:-6]
                if value:
                    found[key] = value
                else:
                    found.pop(key, None)
        self.no_proxy: tuple[str, ...] = tuple(
            entry.strip() for entry in found.get("no", "").split(",") if entry.strip()
        )
        self.http: Proxy | None = None
        self.https: Proxy | None = None
        self.all: Proxy | None = None
        if "*" in self.no_proxy:
            return
        for key in ("http", "https", "all"):
            setting = found.get(key)
            if setting:
                url = setting if "://" in setting else f"http://{setting}"
                try:
                    proxy = Proxy.parse(url)
                except ValueError as exc:
                    raise ValueError(f"{key.upper()}_PROXY: {exc}") from None
                setattr(self, key, proxy)

    def proxy_for(self, endpoint: Endpoint) -> Proxy | None:
        """The proxy for *endpoint*: ``HTTPS_PROXY`` for TLS, ``HTTP_PROXY``
        otherwise, ``ALL_PROXY`` when that one is unset; ``None`` when
        ``NO_PROXY`` matches or nothing is set."""
        proxy = (self.https if endpoint.tls is not None else self.http) or self.all
        if proxy is None or (self.no_proxy and NoProxy(self.no_proxy).matches(endpoint)):
            return None
        return proxy

    def __repr__(self) -> str:
        return (
            f"EnvironmentProxies(http={self.http!r}, https={self.https!r}, "
            f"all={self.all!r}, no_proxy={self.no_proxy!r})"
        )
