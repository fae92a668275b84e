"""Turning a name into every one of its addresses, and remembering the answer.

A resolver answers with *all* the addresses of a name (A and AAAA), each with
the time it may be trusted for.  :class:`ResolutionCache` keeps one answer per
name, lets concurrent callers share one lookup, and when a refresh fails keeps
serving the last good answer for a while (``stale_limit``) rather than taking
a working name down because its DNS server hiccuped.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

__all__ = [
    "DNSResolver",
    "ResolutionCache",
    "ResolvedAddress",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
]


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    """One address of a name.

    :ivar ip: the address as text, ``"127.0.0.11"`` or ``"::1"``.
    :ivar ttl: seconds the answer may be cached; None means "until told otherwise".
    """

    ip: str
    ttl: float | None = None


ResolvedAddress.__module__ = "conpool"


@runtime_checkable
class Resolver(Protocol):
    """What the pool asks to turn a host name into addresses."""

    async def resolve(self, host: str) -> Sequence[ResolvedAddress]:
        """Every address of ``host``; raise :class:`OSError` (or any
        exception) when the name does not resolve."""
        ...


Resolver.__module__ = "conpool"


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``).

    ``getaddrinfo`` reports no TTL, so answers are kept for ``refresh``
    seconds before the name is looked up again.

    :param refresh: seconds between lookups of the same name.
    :param family: ``socket.AF_UNSPEC`` (both), ``AF_INET`` or ``AF_INET6``.
    """

    def __init__(self, refresh: float = 30.0, family: int = socket.AF_UNSPEC) -> None:
        self.refresh = _check_positive("refresh", refresh)
        if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family must be AF_UNSPEC, AF_INET or AF_INET6, got {family!r}")
        self.family = family

    async def resolve(self, host: str) -> Sequence[ResolvedAddress]:
        infos = await anyio.getaddrinfo(host, None, family=self.family, type=socket.SOCK_STREAM)
        seen: dict[str, None] = {}
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam in (socket.AF_INET, socket.AF_INET6):
                seen[str(sockaddr[0])] = None
        return [ResolvedAddress(ip, self.refresh) for ip in seen]

    def __repr__(self) -> str:
        return f"SystemResolver(refresh={self.refresh})"


SystemResolver.__module__ = "conpool"


class StaticResolver:
    """A fixed table of names to addresses; never expires.

    :param table: ``{"pool.test": ["127.0.0.11", "127.0.0.12"]}``; names are
        matched case-insensitively and without a trailing dot.
    """

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        if not isinstance(table, Mapping):
            raise TypeError(f"table must be a mapping of names to addresses, got {table!r}")
        self._table: dict[str, tuple[str, ...]] = {}
        for name, ips in table.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"table: names must be non-empty strings, got {name!r}")
            if isinstance(ips, str) or not isinstance(ips, Sequence):
                raise TypeError(f"table[{name!r}] must be a list of addresses, got {ips!r}")
            checked = []
            for ip in ips:
                try:
                    checked.append(str(ipaddress.ip_address(ip)))
                except ValueError:
                    raise ValueError(f"table[{name!r}]: {ip!r} is not an IP address") from None
            self._table[name.lower().rstrip(".")] = tuple(checked)

    async def resolve(self, host: str) -> Sequence[ResolvedAddress]:
        ips = self._table.get(host.lower().rstrip("."))
        if not ips:
            raise OSError(f"{host!r} is not in the static table")
        return [ResolvedAddress(ip, None) for ip in ips]

    def __repr__(self) -> str:
        return f"StaticResolver({dict(self._table)!r})"


StaticResolver.__module__ = "conpool"


class DNSResolver:
    """A real DNS client (dnspython) that honours each record's TTL.

    A and AAAA are asked for together; the answer's TTL is clamped to
    ``[min_ttl, max_ttl]`` (the defaults keep a 1-second TTL as it is, and
    stop a 0-second TTL from turning every acquire into a lookup).

    :param nameservers: ``[("127.0.0.1", 5353)]``; None uses the system's
        ``/etc/resolv.conf``.
    :param timeout: seconds for the whole lookup.
    :param ipv6: also ask for AAAA records.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        min_ttl: float = 1.0,
        max_ttl: float = 300.0,
        timeout: float = 5.0,
        ipv6: bool = True,
    ) -> None:
        import dns.asyncresolver

        self.min_ttl = _check_positive("min_ttl", min_ttl)
        self.max_ttl = _check_positive("max_ttl", max_ttl)
        if self.max_ttl < self.min_ttl:
            raise ValueError(f"max_ttl must be >= min_ttl, got {max_ttl!r} < {min_ttl!r}")
        self.timeout = _check_positive("timeout", timeout)
        self.ipv6 = bool(ipv6)
        if nameservers is None:
            self._resolver = dns.asyncresolver.Resolver()
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            servers = list(nameservers)
            if not servers:
                raise ValueError("nameservers must not be empty")
            ns: list[Any] = []
            import dns.nameserver

            for entry in servers:
                try:
                    ip, port = entry
                    ipaddress.ip_address(ip)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"nameservers: each entry must be (ip, port), got {entry!r}"
                    ) from None
                if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                    raise ValueError(f"nameservers: bad port in {entry!r}")
                ns.append(dns.nameserver.Do53Nameserver(ip, port))
            self._resolver.nameservers = ns
        self._resolver.lifetime = self.timeout
        # The answer's own TTL decides; dnspython's cache would second-guess it.
        self._resolver.cache = None
        self._nameservers = nameservers

    async def resolve(self, host: str) -> Sequence[ResolvedAddress]:
        import dns.asyncbackend
        import dns.exception
        import dns.resolver

        # dnspython remembers the first async library it sees; name ours.
        backend = dns.asyncbackend.get_backend(_current_library())
        kinds = ("A", "AAAA") if self.ipv6 else ("A",)
        results: dict[str, Sequence[ResolvedAddress] | BaseException] = {}

        async def one(kind: str) -> None:
            try:
                answer = await self._resolver.resolve(host, kind, backend=backend)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                results[kind] = exc
                return
            except dns.exception.DNSException as exc:
                results[kind] = exc
                return
            ttl = min(
                max(float(answer.rrset.ttl if answer.rrset else 0), self.min_ttl), self.max_ttl
            )
            results[kind] = [ResolvedAddress(str(r.address), ttl) for r in answer]

        async with anyio.create_task_group() as tg:
            for kind in kinds:
                tg.start_soon(one, kind)
        addresses: list[ResolvedAddress] = []
        errors: list[BaseException] = []
        for kind in kinds:
            res = results[kind]
            if isinstance(res, BaseException):
                errors.append(res)
            else:
                addresses.extend(res)
        if addresses:
            return addresses
        # Prefer the most telling reason: a timeout or server failure over "no AAAA".
        for exc in errors:
            if not isinstance(exc, dns.resolver.NoAnswer):
                raise OSError(str(exc) or type(exc).__name__) from exc
        raise OSError(f"no A{'/AAAA' if self.ipv6 else ''} records for {host!r}")

    def __repr__(self) -> str:
        return (
            f"DNSResolver(nameservers={self._nameservers!r}, "
            f"min_ttl={self.min_ttl}, max_ttl={self.max_ttl})"
        )


DNSResolver.__module__ = "conpool"


def _current_library() -> str:
    import sniffio

    return sniffio.current_async_library()


class _Lookup:
    """One lookup in progress, shared by every caller that wants the name."""

    __slots__ = ("answered", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.answered = False
        self.error: BaseException | None = None


@dataclass(slots=True)
class _Entry:
    ips: tuple[str, ...] = ()
    expires: float = -math.inf  # refresh after this
    stale_until: float = -math.inf  # serve the old answer until this if refresh fails
    stale: bool = False
    error: BaseException | None = None
    inflight: _Lookup | None = None
    waiters: int = field(default=0)


class ResolutionCache:
    """One answer per name, shared lookups, stale answers on failure.

    :param resolver: where answers come from.
    :param stale_limit: seconds past expiry an old answer is still served
        while refreshes fail.
    """

    def __init__(
        self, resolver: Resolver, stale_limit: float = 300.0, max_names: int = 10_000
    ) -> None:
        self.resolver = resolver
        self.stale_limit = stale_limit
        self.max_names = max_names
        self._entries: dict[str, _Entry] = {}

    def peek(self, host: str, now: float) -> tuple[str, ...] | None:
        """The cached answer if it is still fresh, without awaiting."""
        entry = self._entries.get(host)
        if entry is not None and now < entry.expires:
            return entry.ips
        return None

    def is_stale(self, host: str) -> bool:
        entry = self._entries.get(host)
        return entry is not None and entry.stale

    def looking_up(self, host: str) -> bool:
        """Whether a lookup of ``host`` is in progress (a :meth:`resolve`
        called now joins it)."""
        entry = self._entries.get(host)
        return entry is not None and entry.inflight is not None

    def stale_error(self, host: str) -> BaseException | None:
        """Why the answer served for ``host`` is an old one (None if fresh)."""
        entry = self._entries.get(host)
        return entry.error if entry is not None and entry.stale else None

    async def resolve(
        self, host: str, now: float, on_lookup: Callable[[], None] | None = None
    ) -> tuple[tuple[str, ...], bool]:
        """The addresses of ``host``, looking them up when the answer expired.

        :param on_lookup: called when this call starts a lookup of its own
            (rather than sharing one in progress or the cached answer), for
            the trace.

        :returns: ``(ips, changed)``; ``changed`` is True when this call
            fetched an answer different from the one cached before.
        :raises OSError: the name did not resolve and no usable old answer exists.
        """
        while True:
            entry = self._entries.get(host)
            if entry is not None and now < entry.expires:
                return entry.ips, False
            if entry is None:
                if len(self._entries) >= self.max_names:
                    # Bounded: forget the oldest-inserted name (dict order).
                    self._entries.pop(next(iter(self._entries)))
                entry = self._entries[host] = _Entry()
            lookup = entry.inflight
            if lookup is None:
                break
            # Someone is already asking: share their answer, or their error.
            await lookup.done.wait()
            if lookup.error is not None:
                raise lookup.error
            if lookup.answered:
                return entry.ips, False
            # That lookup was cancelled with its task: ask again ourselves.
        lookup = entry.inflight = _Lookup()
        try:
            if on_lookup is not None:
                on_lookup()
            answer = await self.resolver.resolve(host)
            ips = tuple(dict.fromkeys(str(ipaddress.ip_address(a.ip)) for a in answer))
            if not ips:
                raise OSError(f"the resolver returned no address for {host!r}")
        except Exception as exc:
            entry.error = exc
            if entry.ips and now < entry.stale_until:
                entry.stale = True
                # Try again soon, but not on every acquire.
                entry.expires = now + 1.0
                lookup.answered = True
                return entry.ips, False
            lookup.error = exc
            raise
        else:
            ttls = [a.ttl for a in answer if a.ttl is not None]
            ttl = min(ttls) if ttls else math.inf
            changed = ips != entry.ips and bool(entry.ips)
            entry.ips = ips
            entry.error = None
            entry.stale = False
            entry.expires = now + ttl
            entry.stale_until = entry.expires + self.stale_limit
            lookup.answered = True
        finally:
            # Wakes the tasks sharing this lookup: answered, failed, or (if
            # neither is set) cancelled, in which case they ask again.
            entry.inflight = None
            lookup.done.set()
        return ips, changed
