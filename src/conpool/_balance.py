"""Address selection policies: pure functions from loads to a choice.

Each policy sees the candidate addresses of one name as a sequence of loads
(how many connections each address holds now, open or opening) and returns the
index of the address the next connection should dial.  They hold no state of
their own: the caller passes the rotation counter or the random generator, so a
test can drive every policy exhaustively and reproducibly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

__all__ = ["POLICIES", "Policy", "least_connections", "power_of_two", "round_robin"]

#: ``policy(loads, turn, rng) -> index``; ``turn`` increases by one per choice.
Policy = Callable[[Sequence[int], int, random.Random], int]


def least_connections(loads: Sequence[int], turn: int, rng: random.Random) -> int:
    """The address with the fewest connections; equal ones take turns.

    This is nginx's ``least_conn`` ("a request is sent to the server with the
    least number of active connections ... with round-robin among servers with
    equal load") applied to connections instead of requests.  Without the
    rotation a fresh name would send every first connection to the same
    address, since all loads start at zero.

    :param loads: connections per candidate address; must not be empty.
    :param turn: a counter the caller increments for every choice.
    :param rng: unused; present so every policy has the same signature.
    """
    n = len(loads)
    if n == 1:
        return 0
    low = min(loads)
    start = turn % n
    for k in range(n):
        i = (start + k) % n
        if loads[i] == low:
            return i
    raise AssertionError("unreachable: some load equals the minimum")


def round_robin(loads: Sequence[int], turn: int, rng: random.Random) -> int:
    """Each address in turn, ignoring load: the classic DNS round robin
    (RFC 1794 describes it as a server-side rotation; here the client rotates).
    """
    return turn % len(loads)


def power_of_two(loads: Sequence[int], turn: int, rng: random.Random) -> int:
    """Two addresses at random, the less loaded wins.

    Mitzenmacher, "The Power of Two Random Choices" (IEEE TPDS, 2001): two
    samples instead of one cut the maximum load from O(log n / log log n) to
    O(log log n), without the herding that a global minimum causes when many
    clients share stale load figures.  Envoy's ``LEAST_REQUEST`` balancer uses
    the same rule.  Seed ``rng`` (``Config.balance_seed``) for reproducible runs.
    """
    n = len(loads)
    if n == 1:
        return 0
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    return j if loads[j] < loads[i] else i


#: Every policy by its :attr:`Config.balance <conpool.Config.balance>` name
#: (read-only: ``Config`` validates against it, and the pool looks its
#: policy up in it).
POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "least-connections": least_connections,
        "round-robin": round_robin,
        "power-of-two": power_of_two,
    }
)
