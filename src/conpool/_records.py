"""The state machine's records: what it knows of each endpoint, address,
connection and waiting task (data only: every transition is in
:mod:`conpool._state`).

Generic in the endpoint key ``K`` (the shell's :class:`~conpool.Endpoint`;
tests use strings) and the connection object ``C`` (the shell's
:class:`~conpool.Connection`), so that the machine depends on neither.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Final, Generic, Protocol

from typing_extensions import TypeVar

__all__ = [
    "ACTIVE",
    "CLOSED",
    "DIAL",
    "IDLE",
    "WAIT",
    "AddressState",
    "Answer",
    "ConnRecord",
    "EndpointState",
    "Pooled",
    "RecordState",
    "Waiter",
]


class Pooled(Protocol):
    """What the machine asks of the shell's connection object, and nothing
    else: whether an idle one is still worth handing out (a cheap,
    non-blocking check from flags its transport keeps, and from the kernel
    for long-idle ones)."""

    def _usable(self, idle: float) -> bool: ...


#: The pool's key for an endpoint (the shell's :class:`~conpool.Endpoint`;
#: tests use strings).
K = TypeVar("K", bound=Hashable, default=Hashable)
#: The shell's connection object (the shell's :class:`~conpool.Connection`).
C = TypeVar("C", bound=Pooled, default=Pooled)


class RecordState(enum.Enum):
    """Where a connection record is: idle in the pool, handed out, closed."""

    IDLE = "idle"
    ACTIVE = "active"
    CLOSED = "closed"


# (Typed as the enum, not as literals: a record's state changes under any
# call, and a checker must not assume it kept the value last tested.)
IDLE: RecordState = RecordState.IDLE
ACTIVE: RecordState = RecordState.ACTIVE
CLOSED: RecordState = RecordState.CLOSED


class Answer(enum.Enum):
    """What :meth:`PoolState.acquire` answers when it has no idle record."""

    #: A slot is reserved: open a connection.
    DIAL = "dial"
    #: Nothing is free: park (:meth:`PoolState.enqueue`).
    WAIT = "wait"


DIAL: Final = Answer.DIAL
WAIT: Final = Answer.WAIT


class ConnRecord(Generic[K, C]):
    """The pool's book-keeping for one open connection.

    ``conn`` is the shell's connection object while the pool holds it (idle,
    or on its way to be closed) and None while a task holds it: the pool
    keeps no strong reference to a connection in use, so one dropped without
    release is garbage-collected and reclaimed (see :mod:`conpool._leaks`).
    The machine never touches it except to ask an idle one whether it is
    still usable (see :class:`Pooled`).
    """

    __slots__ = (
        "addr",
        "conn",
        "created",
        "dies",
        "ep",
        "expires",
        "id",
        "last_used",
        "leak",
        "state",
        "uses",
    )

    def __init__(
        self,
        conn_id: int,
        ep: EndpointState[K, C],
        addr: AddressState[K, C],
        now: float,
        lifetime: float,
    ) -> None:
        self.id = conn_id
        self.ep = ep
        self.addr = addr
        self.created = now
        self.last_used = now
        # dies: end of its lifetime; expires: when it may no longer be reused
        # (the earlier of dies and "idle too long"), refreshed at each release
        # so the reuse path compares one number.
        self.dies = now + lifetime
        self.expires = self.dies
        # The shell's own (leak detection); the machine never reads it.
        self.leak: Any = None
        self.uses = 1
        self.state: RecordState = ACTIVE
        self.conn: C | None = None

    def __lt__(self, other: ConnRecord[K, C]) -> bool:
        # The order of PoolState.ages, a heap: the end of the lifetime.
        return self.dies < other.dies

    def __repr__(self) -> str:
        state = self.state.value
        return f"<ConnRecord #{self.id} {self.ep.key}@{self.addr.ip} {state} uses={self.uses}>"


class AddressState(Generic[K, C]):
    """One address of an endpoint's name, with its own counts and health."""

    __slots__ = (
        "consecutive_failures",
        "created",
        "ejected_until",
        "ejections",
        "failures",
        "idle",
        "ip",
        "listed",
        "open",
        "pending",
    )

    def __init__(self, ip: str) -> None:
        self.ip = ip
        # Established connections, in use or idle.  "In use" is derived
        # (open - idle) so that handing out and taking back a connection
        # touches no counter but the idle ones.
        self.open = 0
        self.pending = 0
        # Idle records in the order they became idle: the last is the most
        # recently used (reused first, while its socket is warm) and the first
        # is the oldest (expired first).  A dict is an ordered set with O(1)
        # removal from the middle.
        self.idle: dict[ConnRecord[K, C], None] = {}
        self.created = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = -math.inf
        # False once the name's latest answer no longer lists this address:
        # its connections drain and it receives no new ones.
        self.listed = True

    @property
    def active(self) -> int:
        """Connections to this address handed out now."""
        return self.open - len(self.idle)

    @property
    def connections(self) -> int:
        return self.open + self.pending

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def __repr__(self) -> str:
        return (
            f"<AddressState {self.ip} active={self.active} idle={len(self.idle)} "
            f"pending={self.pending} failures={self.failures}>"
        )


class Waiter(Generic[K, C]):
    """A task parked until a slot or a connection is free for its endpoint."""

    __slots__ = ("budget", "ep", "grant", "handle", "since", "waited")

    def __init__(self, ep: EndpointState[K, C], handle: Any, since: float) -> None:
        self.ep = ep
        # True for a dial waiting for a fleet budget's lease (it holds no
        # slot; see PoolState.wait_budget), False for a task waiting for a
        # slot or a connection.
        self.budget = False
        self.handle = handle
        # None while waiting; then a ConnRecord, or DIAL (a reserved slot).
        self.grant: ConnRecord[K, C] | Answer | None = None
        self.since = since
        # Seconds from queueing to being served, when a release served it
        # (the release knows the time: the shell need not read the clock
        # again); None otherwise.
        self.waited: float | None = None


class EndpointState(Generic[K, C]):
    """Everything the pool knows about one endpoint (one pool key)."""

    __slots__ = (
        "addresses",
        "closed",
        "connect_failures",
        "created",
        "idle",
        "idle_addrs",
        "key",
        "listed",
        "name",
        "open",
        "owner",
        "pending",
        "refill_after",
        "refill_failures",
        "refill_streak",
        "refills",
        "reused",
        "single",
        "turn",
        "waiters",
        "warming",
    )

    def __init__(self, key: K, name: str | None = None) -> None:
        self.key = key
        # The name its addresses come from; None when the key is an address
        # (an IP literal), which never needs a lookup.
        self.name = name
        # The PoolState this belongs to: lets the shell reject a connection
        # from another pool with one identity check.
        self.owner: object = None
        # Established connections, in use or idle; in use is open - idle.
        self.open = 0
        self.idle = 0
        self.pending = 0
        self.created = 0
        self.reused = 0
        self.closed = 0
        self.connect_failures = 0
        # Every address that holds connections or is in the latest answer.
        self.addresses: dict[str, AddressState[K, C]] = {}
        # The latest answer, in the resolver's order.
        self.listed: list[AddressState[K, C]] = []
        # Ordered dicts, not dicts: popping from the front of a plain dict
        # again and again costs a scan over the holes its deletions left.
        self.waiters: OrderedDict[Waiter[K, C], None] = OrderedDict()
        self.turn = 0
        # The only address, when there is exactly one: the reuse path then
        # needs no choice among addresses.
        self.single: AddressState[K, C] | None = None
        # The addresses holding idle connections, in the order they came to
        # hold them, oldest first, so that choosing where to reuse from
        # costs about the same with 64 addresses as with 2 (kept only while
        # there is more than one address; see _addresses_changed).  An
        # address is appended when it gains an idle connection and removed
        # when it has none left; list.remove keeps the order (a scan and a
        # move of pointers in C, cheaper up to some hundreds of addresses
        # than keeping positions for a swap-remove in Python).
        self.idle_addrs: list[AddressState[K, C]] = []
        # The warm floor: dials in progress that will leave their connection
        # idle (refills and prewarm), warm connections made and warm dials
        # failed, failures in a row, and when the next refill may start.
        self.warming = 0
        self.refills = 0
        self.refill_failures = 0
        self.refill_streak = 0
        self.refill_after = -math.inf

    @property
    def active(self) -> int:
        """Connections handed out now."""
        return self.open - self.idle

    @property
    def total(self) -> int:
        return self.open + self.pending

    def __repr__(self) -> str:
        return (
            f"<EndpointState {self.key} active={self.active} idle={self.idle} "
            f"pending={self.pending} waiting={len(self.waiters)}>"
        )
