"""Pool configuration: one frozen, validated value.

Validation happens once, at construction, so the pool never has to wonder
whether a limit is ``0``, negative, ``NaN`` or a ``bool`` that slipped through.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

from ._balance import POLICIES
from ._noproxy import NoProxy
from ._proxy import Proxy

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["BALANCE_POLICIES", "Config", "HealthCheck", "OnConnect", "Reset", "SocketOption"]

#: The names accepted by :attr:`Config.balance`.
BALANCE_POLICIES: tuple[str, ...] = tuple(POLICIES)

#: ``async def check(conn: conpool.Connection) -> bool``; a check annotated with a
#: supertype such as :class:`anyio.abc.ByteStream` fits too. Quoted because the
#: connection module is only imported for type checking: configuration sits
#: below the I/O shell in the import graph.
HealthCheck: TypeAlias = Callable[["Connection"], Awaitable[bool]]

#: ``async def on_connect(conn: conpool.Connection) -> None``: run once on every
#: new connection before its first hand-out.
OnConnect: TypeAlias = Callable[["Connection"], Awaitable[None]]

#: ``async def reset(conn: conpool.Connection) -> bool``: run on every release
#: of a connection that would be reused; ``False`` closes it.
Reset: TypeAlias = Callable[["Connection"], Awaitable[bool]]

#: ``(level, option, value)`` as :meth:`socket.socket.setsockopt` takes them.
SocketOption: TypeAlias = tuple[int, int, "int | bytes"]

# setsockopt(2) takes a C int for level, option and an int value; a bytes
# value is copied into a kernel buffer, and no option wants more than this.
_C_INT_MIN, _C_INT_MAX = -(2**31), 2**31 - 1
_MAX_OPTION_BYTES = 1024


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _int(name: str, value: object, minimum: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    # bool is an int subclass, but Config(max_connections=True) is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _float(
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    inclusive: bool = True,
    finite: bool = True,
    optional: bool = False,
) -> float | None:
    """Check a number of seconds (or a share) and return it as a float."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"{name} must be {kind}, got {_describe(value)}")
    number = float(value) if isinstance(value, float) else _int_to_float(name, value)
    # NaN compares false with everything, so it would pass every range check
    # below and then make every deadline comparison in the pool false too.
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if finite and math.isinf(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if inclusive and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if not inclusive and number <= minimum:
        raise ValueError(f"{name} must be > {minimum:g}, got {value!r}")
    return number


def _socket_options(value: object) -> tuple[SocketOption, ...]:
    """Check ``socket_options`` and return it as a tuple of tuples (hashable,
    like the rest of the config)."""
    name = "socket_options"
    # A str or bytes is a sequence too, of characters: never what was meant.
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a sequence of (level, option, value) tuples, got {_describe(value)}"
        )
    options: list[SocketOption] = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, tuple) or len(entry) != 3:
            raise TypeError(
                f"{where} must be a (level, option, value) tuple, got {_describe(entry)}"
            )
        level, option, setting = entry
        for part, number in (("level", level), ("option", option)):
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError(f"{where}: {part} must be an int, got {_describe(number)}")
            if not 0 <= number <= _C_INT_MAX:
                raise ValueError(f"{where}: {part} must be in 0..{_C_INT_MAX}, got {number!r}")
        if isinstance(setting, bytes | bytearray):
            if len(setting) > _MAX_OPTION_BYTES:
                raise ValueError(
                    f"{where}: a bytes value must be at most {_MAX_OPTION_BYTES} bytes, "
                    f"got {len(setting)}"
                )
            setting = bytes(setting)
        elif isinstance(setting, bool) or not isinstance(setting, int):
            # True would work with setsockopt, but the config never takes a
            # bool for a number; 1 says the same.
            raise TypeError(f"{where}: value must be an int or bytes, got {_describe(setting)}")
        elif not _C_INT_MIN <= setting <= _C_INT_MAX:
            raise ValueError(f"{where}: value must fit a C int, got {setting!r}")
        options.append((int(level), int(option), setting))
    return tuple(options)


def _local_address(value: object) -> str | None:
    """Check ``local_address`` and return its canonical spelling."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"local_address must be an IP address as a str or None, got {_describe(value)}"
        )
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"local_address must be an IP address, got {value!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # bind() needs the zone as an interface index, which the text form
        # does not carry portably: refuse it rather than bind something else.
        raise ValueError(f"local_address must not carry an IPv6 zone id, got {value!r}")
    return str(address)


def _int_to_float(name: str, value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large, got {value!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """How a :class:`conpool.Pool` opens, shares, balances and retires connections.

    All times are in seconds. Numbers may be given as ``int`` or ``float`` and
    are stored as ``float``; ``bool`` is rejected wherever a number is expected.

    :param max_connections_per_endpoint: connections (idle and active) per
        endpoint, at least 1.
    :param max_connections: connections (idle and active) across all endpoints,
        at least 1, or ``None`` for no global limit. When it is reached and
        another endpoint holds idle connections, the least recently used idle
        one is closed to make room.
    :param max_idle_time: seconds a connection may sit idle before it is
        closed; greater than 0, :data:`math.inf` for never.
    :param max_connection_lifetime: seconds since connect after which a
        connection is not reused; greater than 0, :data:`math.inf` for never.
    :param lifetime_jitter: a fraction in [0, 1): each connection's lifetime
        is *max_connection_lifetime* shortened by a random part of up to this
        share (0.1: lifetimes spread over the last tenth), so that connections
        opened together, at start-up or after an outage, are not all replaced
        at the same moment.  0, the default, keeps every lifetime exact.
    :param max_connection_uses: hand-outs after which a connection is closed
        instead of reused, at least 1, or ``None`` for no limit.
    :param health_check: ``async def check(conn) -> bool`` run on an idle
        connection before it is handed out again; ``False`` or an exception
        closes it. ``None`` for no check.
    :param connect_timeout: seconds per connection attempt, covering the TCP
        connect and the TLS handshake; greater than 0, or ``None`` for no limit.
    :param connect_retries: extra attempts after the first, at least 0.
    :param retry_backoff: base delay before a retry, doubled per attempt, with
        jitter; at least 0 and finite.
    :param retry_backoff_max: cap on the delay before a retry; finite and at
        least *retry_backoff*.
    :param acquire_timeout: seconds to wait for a free slot, at least 0
        (``0`` fails at once when no slot is free), or ``None`` for no limit.
    :param max_waiters: how many acquires may wait for a slot at once; the
        next one fails at once with :class:`conpool.PoolTimeout`. At least 0
        (``0`` means never wait), or ``None`` for no limit.
    :param balance: how a new connection picks one of the endpoint's
        addresses; one of :data:`BALANCE_POLICIES`.
    :param max_ejected_share: the largest share of an endpoint's addresses that
        may be ejected for failing at once, in (0, 1]. Beyond it failing
        addresses stay in rotation, so a wide outage degrades to retries rather
        than to an endpoint with nowhere to connect (Envoy's
        ``max_ejection_percent`` plays the same role).  As in Envoy, one of
        several addresses may always be ejected, whatever the share.  A
        name's only address is ejected only with a share of 1.0, and is
        dialled anyway (the pool fails open when every address is out).
    :param eject_after_failures: consecutive connect failures after which an
        address is ejected, at least 1.
    :param eject_time: seconds an address stays ejected the first time, greater
        than 0 and finite; doubled on each further ejection.
    :param eject_time_max: cap on the ejection time, finite and at least
        *eject_time*.
    :param happy_eyeballs_delay: seconds to wait for one address before also
        trying the next (RFC 8305's "Connection Attempt Delay"), greater than 0
        and finite.
    :param balance_seed: seed for the random choices of the balancing policies
        and of retry jitter, making them reproducible in tests; ``None`` seeds
        from the system.
    :param sweep_interval: seconds between sweeps that close expired idle
        connections, greater than 0 and finite, or ``None`` to derive it from
        *max_idle_time* and *max_connection_lifetime*.
    :param leak_warning_after: seconds a connection may stay acquired before
        the pool logs a warning on the ``conpool`` logger with the stack that
        acquired it (HikariCP's leak detection); ``None`` (the default) turns
        it off and records no stacks.  Independently of it, a connection
        garbage-collected without being released is always reported with a
        ``ResourceWarning``, closed, and its slot reclaimed.
    :param dns_stale_limit: seconds past its expiry that a name's last good
        answer is still used while refreshing it fails (greater than 0;
        ``math.inf`` keeps it forever, a small value fails fast).
    :param proxy: a :class:`~conpool.Proxy` every connection goes through
        (``Proxy.parse("socks5://127.0.0.1:1080")``), or ``None`` to connect
        directly.  The proxy connect and its handshake count in
        *connect_timeout*.
    :param no_proxy: endpoints that bypass *proxy*, as in ``NO_PROXY``:
        host names (``example.com`` and the names under it), ``.suffix``
        (only the names under it), IP addresses, CIDRs (``10.0.0.0/8``),
        ``*`` for all, each optionally with ``:port``.  Stored as a tuple.
    :param min_idle: connections kept open per endpoint the pool has served
        or prewarmed, so that while nobody uses them this many are idle and
        ready; spread over the name's addresses; at least 0 and at most
        *max_connections_per_endpoint* (and *max_connections*).  Connections
        in use count towards it.  While an endpoint has no more than this
        many open, its idle ones are not closed for idle time; those retired
        for their lifetime, their uses, a failed health check or the peer's
        close are replaced in the background.  0, the default, keeps no floor.
    :param on_connect: ``async def on_connect(conn) -> None`` run once on every
        new connection (after TLS) before its first hand-out: AUTH, SELECT, a
        greeting.  If it raises, the connection is closed and the acquire
        fails with :class:`conpool.ConnectError` (not retried, and not
        counted against the address).
    :param reset: ``async def reset(conn) -> bool`` run on every release of a
        connection that would be reused; ``False`` or an exception closes it
        instead.
    :param socket_options: ``(level, option, value)`` tuples applied with
        :meth:`socket.socket.setsockopt` to every socket before it connects,
        e.g. ``(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)``.  ``TCP_NODELAY``
        is on unless an entry sets it.  On Unix domain sockets, options of
        the TCP and IP levels are skipped (they do not apply there).  Not
        applied to the socket to a *proxy*.
    :param local_address: the source IP to bind (port 0) before connecting,
        e.g. ``"127.0.0.5"``; ``None`` lets the kernel choose.  Only
        addresses of its family are dialled with it: an IPv4 source cannot
        reach an IPv6 address.  Not applied to the socket to a *proxy*.
    :raises TypeError: if a field has the wrong type, e.g. a float or bool
        where an int is expected, or a non-callable *health_check*.
    :raises ValueError: if a field is out of range, NaN, or infinite where
        that makes no sense, or *balance* is not a known policy.
    """

    max_connections_per_endpoint: int = 10
    max_connections: int | None = None
    max_idle_time: float = 60.0
    max_connection_lifetime: float = 300.0
    max_connection_uses: int | None = None
    health_check: HealthCheck | None = None
    connect_timeout: float | None = 10.0
    connect_retries: int = 3
    retry_backoff: float = 0.1
    retry_backoff_max: float = 5.0
    acquire_timeout: float | None = None
    max_waiters: int | None = None
    balance: str = "least-connections"
    max_ejected_share: float = 0.5
    eject_after_failures: int = 3
    eject_time: float = 1.0
    eject_time_max: float = 30.0
    happy_eyeballs_delay: float = 0.25
    balance_seed: int | None = None
    sweep_interval: float | None = None
    dns_stale_limit: float = 300.0
    leak_warning_after: float | None = None
    lifetime_jitter: float = 0.0
    proxy: Proxy | None = None
    no_proxy: Sequence[str] = ()
    min_idle: int = 0
    on_connect: OnConnect | None = None
    reset: Reset | None = None
    socket_options: Sequence[SocketOption] = ()
    local_address: str | None = None

    def __post_init__(self) -> None:
        proxy: object = self.proxy
        if proxy is not None and not isinstance(proxy, Proxy):
            hint = " (use conpool.Proxy.parse(url))" if isinstance(proxy, str) else ""
            raise TypeError(
                f"proxy must be a conpool.Proxy or None, got {type(proxy).__name__}{hint}"
            )
        # Compiled once here, which validates every entry; the pool asks it
        # at each dial.
        object.__setattr__(self, "no_proxy", NoProxy(self.no_proxy).entries)
        _int("max_connections_per_endpoint", self.max_connections_per_endpoint, 1)
        _int("max_connections", self.max_connections, 1, optional=True)
        _int("max_connection_uses", self.max_connection_uses, 1, optional=True)
        _int("connect_retries", self.connect_retries, 0)
        _int("max_waiters", self.max_waiters, 0, optional=True)
        _int("eject_after_failures", self.eject_after_failures, 1)
        if self.balance_seed is not None and (
            isinstance(self.balance_seed, bool) or not isinstance(self.balance_seed, int)
        ):
            raise TypeError(
                f"balance_seed must be an int or None, got {_describe(self.balance_seed)}"
            )

        # Floats are stored back as float so that the pool's arithmetic (and a
        # repr) does not depend on whether the caller wrote 60 or 60.0.
        floats: dict[str, float | None] = {
            # An infinite idle time or lifetime is a clear way to say "never".
            "max_idle_time": _float(
                "max_idle_time", self.max_idle_time, inclusive=False, finite=False
            ),
            "max_connection_lifetime": _float(
                "max_connection_lifetime",
                self.max_connection_lifetime,
                inclusive=False,
                finite=False,
            ),
            # An infinite timeout is the same as None: no limit.
            "connect_timeout": _float(
                "connect_timeout",
                self.connect_timeout,
                inclusive=False,
                finite=False,
                optional=True,
            ),
            "acquire_timeout": _float(
                "acquire_timeout", self.acquire_timeout, finite=False, optional=True
            ),
            # Infinite delays would park a retry or an ejected address forever,
            # which is a hang, not a policy.
            "retry_backoff": _float("retry_backoff", self.retry_backoff),
            "retry_backoff_max": _float("retry_backoff_max", self.retry_backoff_max),
            "max_ejected_share": _float(
                "max_ejected_share", self.max_ejected_share, inclusive=False
            ),
            "eject_time": _float("eject_time", self.eject_time, inclusive=False),
            "eject_time_max": _float("eject_time_max", self.eject_time_max, inclusive=False),
            "happy_eyeballs_delay": _float(
                "happy_eyeballs_delay", self.happy_eyeballs_delay, inclusive=False
            ),
            "sweep_interval": _float(
                "sweep_interval", self.sweep_interval, inclusive=False, optional=True
            ),
            "leak_warning_after": _float(
                "leak_warning_after", self.leak_warning_after, inclusive=False, optional=True
            ),
            "dns_stale_limit": _float(
                "dns_stale_limit", self.dns_stale_limit, inclusive=False, finite=False
            ),
        }
        jitter = self.lifetime_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
            raise TypeError(f"lifetime_jitter must be a number, got {_describe(jitter)}")
        if not 0.0 <= jitter < 1.0:  # also refuses NaN
            raise ValueError(f"lifetime_jitter must be in [0, 1), got {jitter!r}")
        floats["lifetime_jitter"] = float(jitter)
        share = floats["max_ejected_share"]
        if share is not None and share > 1.0:
            raise ValueError(f"max_ejected_share must be in (0, 1], got {self.max_ejected_share!r}")
        backoff, backoff_max = floats["retry_backoff"], floats["retry_backoff_max"]
        if backoff is not None and backoff_max is not None and backoff_max < backoff:
            raise ValueError(
                f"retry_backoff_max must be >= retry_backoff ({self.retry_backoff!r}), "
                f"got {self.retry_backoff_max!r}"
            )
        eject, eject_max = floats["eject_time"], floats["eject_time_max"]
        if eject is not None and eject_max is not None and eject_max < eject:
            raise ValueError(
                f"eject_time_max must be >= eject_time ({self.eject_time!r}), "
                f"got {self.eject_time_max!r}"
            )

        if not isinstance(self.balance, str):
            raise TypeError(f"balance must be a str, got {_describe(self.balance)}")
        if self.balance not in POLICIES:
            choices = ", ".join(repr(policy) for policy in BALANCE_POLICIES)
            raise ValueError(f"balance must be one of {choices}, got {self.balance!r}")
        if self.health_check is not None and not callable(self.health_check):
            raise TypeError(
                f"health_check must be an async callable or None, "
                f"got {_describe(self.health_check)}"
            )

        for hook in ("on_connect", "reset"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise TypeError(f"{hook} must be an async callable or None, got {_describe(value)}")
        _int("min_idle", self.min_idle, 0)
        if self.min_idle > self.max_connections_per_endpoint:
            raise ValueError(
                f"min_idle must be <= max_connections_per_endpoint "
                f"({self.max_connections_per_endpoint}), got {self.min_idle!r}"
            )
        if self.max_connections is not None and self.min_idle > self.max_connections:
            raise ValueError(
                f"min_idle must be <= max_connections ({self.max_connections}), "
                f"got {self.min_idle!r}"
            )
        object.__setattr__(self, "socket_options", _socket_options(self.socket_options))
        object.__setattr__(self, "local_address", _local_address(self.local_address))

        for name, number in floats.items():
            # A frozen dataclass forbids normal assignment, even here.
            object.__setattr__(self, name, number)

    def proxy_for(self, host: str, port: int) -> Proxy | None:
        """The proxy a connection to ``host:port`` goes through, or ``None``
        for a direct connection (no *proxy*, or *no_proxy* matches).

        :param host: a normalised host, as :attr:`conpool.Endpoint.host`.
        :param port: the port.
        """
        if self.proxy is None or not self.no_proxy:
            return self.proxy
        entries = cast("tuple[str, ...]", self.no_proxy)  # made a tuple by __post_init__
        rules = _no_proxy_cache.get(entries)
        if rules is None:
            if len(_no_proxy_cache) > 64:
                _no_proxy_cache.clear()
            rules = _no_proxy_cache[entries] = NoProxy(entries)
        return None if rules.matches_host(host, port) else self.proxy


# Compiled no_proxy lists by their entries: a frozen, slotted dataclass has no
# room for a cached attribute, and the entries are a hashable tuple.
_no_proxy_cache: dict[tuple[str, ...], NoProxy] = {}


Config.__module__ = "conpool"
