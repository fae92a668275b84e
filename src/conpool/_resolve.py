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
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio
from anyio import to_thread

__all__ = [
    "DNSResolver",
    "ResolutionCache",
    "ResolvedAddress",
    "Resolver",
    "SyncResolver",
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


@runtime_checkable
class SyncResolver(Protocol):
    """What :class:`~conpool.SyncPool` asks: the same as :class:`Resolver`,
    blocking.  Every resolver conpool provides has both methods."""

    def resolve_sync(self, host: str) -> Sequence[ResolvedAddress]:
        """Every address of ``host``, blocking the calling thread."""
        ...


SyncResolver.__module__ = "conpool"


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
        return self._answer(infos)

    def resolve_sync(self, host: str) -> Sequence[ResolvedAddress]:
        """:meth:`resolve`, blocking (for :class:`~conpool.SyncPool`)."""
        infos = socket.getaddrinfo(host, None, family=self.family, type=socket.SOCK_STREAM)
        return self._answer(infos)

    def _answer(self, infos: Sequence[tuple[Any, Any, Any, Any, Any]]) -> list[ResolvedAddress]:
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
        return self.resolve_sync(host)

    def resolve_sync(self, host: str) -> Sequence[ResolvedAddress]:
        """:meth:`resolve`, blocking (for :class:`~conpool.SyncPool`)."""
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
        self._blocking: Any = None  # dnspython's blocking resolver, made on first use

    async def resolve(self, host: str) -> Sequence[ResolvedAddress]:
        import dns.asyncbackend
        import dns.exception

        # dnspython remembers the first async library it sees; name ours.
        backend = dns.asyncbackend.get_backend(_current_library())
        results: dict[str, Any] = {}

        async def one(kind: str) -> None:
            try:
                results[kind] = await self._resolver.resolve(host, kind, backend=backend)
            except dns.exception.DNSException as exc:
                results[kind] = exc

        async with anyio.create_task_group() as tg:
            for kind in self._kinds:
                tg.start_soon(one, kind)
        return self._combine(host, results)

    def resolve_sync(self, host: str) -> Sequence[ResolvedAddress]:
        """:meth:`resolve`, blocking (for :class:`~conpool.SyncPool`): the
        same nameservers and limits, dnspython's blocking resolver, A then
        AAAA."""
        import dns.exception
        import dns.resolver

        blocking = self._blocking
        if blocking is None:
            blocking = dns.resolver.Resolver(configure=False)
            blocking.nameservers = self._resolver.nameservers
            blocking.lifetime = self.timeout
            blocking.cache = None
            self._blocking = blocking
        results: dict[str, Any] = {}
        for kind in self._kinds:
            try:
                results[kind] = blocking.resolve(host, kind)
            except dns.exception.DNSException as exc:
                results[kind] = exc
        return self._combine(host, results)

    @property
    def _kinds(self) -> tuple[str, ...]:
        return ("A", "AAAA") if self.ipv6 else ("A",)

    def _combine(self, host: str, results: Mapping[str, Any]) -> list[ResolvedAddress]:
        """The addresses of the answers (one per record type asked), or the
        most telling error when none has any."""
        import dns.resolver

        addresses: list[ResolvedAddress] = []
        errors: list[BaseException] = []
        for kind in self._kinds:
            res = results[kind]
            if isinstance(res, BaseException):
                errors.append(res)
                continue
            ttl = min(max(float(res.rrset.ttl if res.rrset else 0), self.min_ttl), self.max_ttl)
            addresses.extend(ResolvedAddress(str(r.address), ttl) for r in res)
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
    """One lookup in progress, shared by every caller that wants the name
    (``done``: an :class:`anyio.Event` for the async shell's lookups, a
    :class:`threading.Event` for the threaded shell's)."""

    __slots__ = ("answered", "done", "error")

    def __init__(self, done: anyio.Event | threading.Event) -> None:
        self.done = done
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

    Both shells use it: :meth:`resolve` from the event loop, :meth:`resolve_sync`
    from threads; what a lookup's outcome does to the cache is one code path
    (:meth:`_begin`, :meth:`_answered`, :meth:`_failed`) for both.

    :param resolver: where answers come from.
    :param stale_limit: seconds past expiry an old answer is still served
        while refreshes fail.
    """

    def __init__(self, resolver: Any, stale_limit: float = 300.0, max_names: int = 10_000) -> None:
        self.resolver = resolver
        self.stale_limit = stale_limit
        self.max_names = max_names
        self._entries: dict[str, _Entry] = {}
        # Threads look names up through the cache under this lock (never
        # held across the lookup itself).
        self._lock = threading.Lock()

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

    def _begin(self, host: str, now: float) -> tuple[_Entry, tuple[str, ...] | _Lookup | None]:
        """Where a resolve stands: the fresh answer, a lookup in progress to
        share, or None (this caller must look the name up)."""
        entry = self._entries.get(host)
        if entry is not None and now < entry.expires:
            return entry, entry.ips
        if entry is None:
            if len(self._entries) >= self.max_names:
                # Bounded: forget the oldest-inserted name (dict order).
                self._entries.pop(next(iter(self._entries)))
            entry = self._entries[host] = _Entry()
        return entry, entry.inflight

    @staticmethod
    def _shared(entry: _Entry, lookup: _Lookup) -> tuple[str, ...] | None:
        """What a caller that shared ``lookup`` gets once it is done: the
        answer, or None when it was abandoned (then ask again)."""
        if lookup.error is not None:
            raise lookup.error
        return entry.ips if lookup.answered else None

    def _answered(
        self,
        host: str,
        entry: _Entry,
        lookup: _Lookup,
        answer: Sequence[ResolvedAddress],
        now: float,
    ) -> tuple[tuple[str, ...], bool]:
        ips = tuple(dict.fromkeys(str(ipaddress.ip_address(a.ip)) for a in answer))
        if not ips:
            raise OSError(f"the resolver returned no address for {host!r}")
        ttls = [a.ttl for a in answer if a.ttl is not None]
        ttl = min(ttls) if ttls else math.inf
        changed = ips != entry.ips and bool(entry.ips)
        entry.ips = ips
        entry.error = None
        entry.stale = False
        entry.expires = now + ttl
        entry.stale_until = entry.expires + self.stale_limit
        lookup.answered = True
        return ips, changed

    @staticmethod
    def _failed(entry: _Entry, lookup: _Lookup, exc: Exception, now: float) -> bool:
        """A lookup failed: True when the old answer is served instead (the
        caller returns it), False when the error stands (the caller raises)."""
        entry.error = exc
        if entry.ips and now < entry.stale_until:
            entry.stale = True
            # Try again soon, but not on every acquire.
            entry.expires = now + 1.0
            lookup.answered = True
            return True
        lookup.error = exc
        return False

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
            entry, found = self._begin(host, now)
            if isinstance(found, tuple):
                return found, False
            if found is None:
                break
            # Someone is already asking: share their answer, or their error.
            done = found.done
            if isinstance(done, anyio.Event):
                await done.wait()
            else:  # a thread's lookup: wait for it without blocking the loop
                await to_thread.run_sync(done.wait)
            ips = self._shared(entry, found)
            if ips is not None:
                return ips, False
            # That lookup was cancelled with its task: ask again ourselves.
        lookup = entry.inflight = _Lookup(anyio.Event())
        try:
            if on_lookup is not None:
                on_lookup()
            answer = await self.resolver.resolve(host)
            return self._answered(host, entry, lookup, answer, now)
        except Exception as exc:
            if self._failed(entry, lookup, exc, now):
                return entry.ips, False
            raise
        finally:
            # Wakes the tasks sharing this lookup: answered, failed, or (if
            # neither is set) cancelled, in which case they ask again.
            entry.inflight = None
            lookup.done.set()

    def resolve_sync(
        self, host: str, now: float, on_lookup: Callable[[], None] | None = None
    ) -> tuple[tuple[str, ...], bool]:
        """:meth:`resolve` for threads: the resolver's ``resolve_sync``, one
        lookup per name at a time, shared by the threads that want it."""
        while True:
            with self._lock:
                entry, found = self._begin(host, now)
                if isinstance(found, tuple):
                    return found, False
                if found is None:
                    lookup = entry.inflight = _Lookup(threading.Event())
                    break
            done = found.done
            if isinstance(done, threading.Event):
                done.wait()
            else:
                # An event loop's lookup of the same cache: not shareable
                # from a thread, so look the name up ourselves.
                lookup = _Lookup(threading.Event())
                break
            with self._lock:
                ips = self._shared(entry, found)
            if ips is not None:
                return ips, False
        try:
            if on_lookup is not None:
                on_lookup()
            answer = self.resolver.resolve_sync(host)
            with self._lock:
                return self._answered(host, entry, lookup, answer, now)
        except Exception as exc:
            with self._lock:
                if self._failed(entry, lookup, exc, now):
                    return entry.ips, False
            raise
        finally:
            with self._lock:
                if entry.inflight is lookup:
                    entry.inflight = None
            lookup.done.set()
