"""How one dial proceeds: rounds, retries, backoff, Happy Eyeballs (pure).

The shell (:mod:`conpool._connect`) opens sockets and sleeps; every choice it
makes on the way is asked of this module, which does no I/O and reads no
clock, so each rule is tested without an event loop (``tests/test_dialplan.py``).

A dial is a series of *rounds*: ``1 + connect_retries`` at most.  Each round
dials the address the state machine picks; when the name has both IPv4 and
IPv6 addresses a round is a Happy Eyeballs race (RFC 8305, section 5): if the
first attempt has neither succeeded nor failed after ``happy_eyeballs_delay``
(250 ms by default, the RFC's recommended "Connection Attempt Delay"), a second
attempt starts to an address of the other family; a failure starts it at once
instead ("... or the previous attempt fails").  The first to succeed wins, and
the loser is cancelled and its socket closed.  When the address that started
first loses to the other family, its cancellation counts as its failure, so
that a black-holed family is ejected after a few races instead of costing the
delay on every dial.

Between rounds the dial waits an exponential backoff with full jitter, and it
stops early when no error of the round could go differently on a retry (a TLS
certificate that does not verify will not verify next time).
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Iterable

from ._errors import SocketSetupError
from ._proxy import Proxy, ProxyError

__all__ = [
    "DialPlan",
    "Race",
    "address_label",
    "backoff_delay",
    "blames_address",
    "family",
    "retryable",
    "should_race",
    "tls_failure",
]


def family(ip: str) -> int:
    """4 or 6: the address family of an address in text form."""
    return 6 if ":" in ip else 4


def should_race(ips: Iterable[str]) -> bool:
    """Whether a round races two address families (RFC 8305): only when the
    name's answer holds both."""
    seen = {family(ip) for ip in ips}
    return len(seen) == 2


def tls_failure(exc: BaseException) -> bool:
    """Whether an attempt failed in the TLS handshake (for the trace)."""
    return isinstance(exc, ssl.SSLError) or (
        isinstance(exc, TimeoutError) and str(exc).startswith("TLS handshake")
    )


def retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed where this one failed.

    A TLS error (a certificate that does not verify, a server that does not
    speak TLS) will fail the same way on every attempt: retrying only delays
    the error and hammers the server.  So will a socket option or a source
    address the kernel refuses.  Anything but an :class:`OSError` is not a
    connection failure at all.  A proxy's refusal says itself
    (:attr:`conpool.ProxyError.retryable`: a 407 will repeat, a proxy that
    was down may be back).
    """
    if isinstance(exc, ProxyError):
        return exc.retryable
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError | SocketSetupError)


def address_label(ip: str, port: int, unix: bool = False) -> str:
    """How the address one attempt dialled reads in an error's story:
    ``tcp:IP:PORT``, or ``unix:PATH`` (``ip`` is then the path)."""
    if unix:
        return f"unix:{ip}"
    host = f"[{ip}]" if ":" in ip else ip
    return f"tcp:{host}:{port}"


def blames_address(exc: BaseException) -> bool:
    """Whether a failed attempt counts against the address it dialled (and
    so towards its ejection): every direct failure does; through a proxy,
    only a failure of the target behind it
    (:attr:`conpool.ProxyError.blames_target`), not the proxy's own."""
    return exc.blames_target if isinstance(exc, ProxyError) else True


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    "Full jitter" from the AWS Architecture Blog's *Exponential Backoff And
    Jitter* (Brooker, 2015): uniform in ``[0, min(cap, base * 2**(retry-1))]``.
    Spreading retries over the whole window avoids synchronised retry storms
    when many tasks lose the same server at once.
    """
    if base <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(retry - 1, 62))
    return rng.uniform(0.0, ceiling)


class DialPlan:
    """The rounds of one dial: when to start the next, when to give up.

    :param retries: ``Config.connect_retries``.
    :param backoff: ``Config.retry_backoff``.
    :param backoff_max: ``Config.retry_backoff_max``.
    :param rng: the source of the backoff's jitter.
    :param attempt_timeout: seconds each attempt may take (the caller's
        ``connect_timeout``, or the config's).

    Use::

        while (delay := plan.next_round()) is not None:
            sleep(delay)             # 0.0 before the first round
            ... dial; plan.failed(ip, exc) for each failed attempt ...
    """

    __slots__ = (
        "attempt_timeout",
        "backoff",
        "backoff_max",
        "errors",
        "rng",
        "round",
        "round_start",
        "rounds",
    )

    def __init__(
        self,
        retries: int,
        backoff: float,
        backoff_max: float,
        rng: random.Random,
        attempt_timeout: float | None = None,
    ) -> None:
        self.attempt_timeout = attempt_timeout
        self.rounds = 1 + retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.rng = rng
        #: Rounds started so far.
        self.round = 0
        #: Every failed attempt, in order: (address, error).
        self.errors: list[tuple[str, BaseException]] = []
        self.round_start = 0

    @property
    def tried(self) -> list[str]:
        """Addresses that failed in this dial, in order (the state machine
        tries others first)."""
        return [ip for ip, _ in self.errors]

    def failed(self, ip: str, exc: BaseException) -> None:
        """An attempt of the current round failed."""
        self.errors.append((ip, exc))

    def next_round(self) -> float | None:
        """Seconds to wait before the next round (0.0 for the first), or None
        when the dial is over: every round was used, or the last round's
        errors cannot go differently on a retry."""
        if self.round:
            if self.round >= self.rounds:
                return None
            if not any(retryable(exc) for _, exc in self.errors[self.round_start :]):
                return None
        self.round += 1
        self.round_start = len(self.errors)
        if self.round == 1:
            return 0.0
        return backoff_delay(self.round - 1, self.backoff, self.backoff_max, self.rng)

    def context(
        self, endpoint: object, port: int, proxy: Proxy | None = None, unix: bool = False
    ) -> list[str]:
        """The story of a dial that failed, innermost first, for its
        :class:`~conpool.ConnectError`; through *proxy*, the first line says
        so (without its credentials); ``unix``: to a Unix socket."""
        ip = self.errors[-1][0]
        via = "" if proxy is None else f" via {proxy}"
        context = [
            f"connecting to {address_label(ip, port, unix)}{via}",
            f"connecting to {endpoint}",
        ]
        if self.round > 1:
            # Retries and attempts both appear in the line, so that nobody has to
            # reconcile "3 retries" with the four entries of ``errors`` (a Happy
            # Eyeballs round makes two attempts, so these may differ by more).
            retries = self.round - 1
            plural = "s" if retries > 1 else ""
            attempts = len(self.errors)
            context.append(f"after {retries} retry attempt{plural} ({attempts} attempts in all)")
        return context


class Race:
    """One Happy Eyeballs round: who started, who won, and what a cancelled
    attempt counts as.

    :param first: the address the round started with.
    """

    __slots__ = ("first", "second", "winner")

    def __init__(self, first: str) -> None:
        self.first = first
        self.second: str | None = None
        self.winner: str | None = None

    def second_family(self) -> int:
        """The family the second attempt must use: the other one."""
        return 4 if family(self.first) == 6 else 6

    def won(self, ip: str) -> bool:
        """An attempt to ``ip`` connected: True if it wins the round, False
        if another won first (then its connection is closed unused)."""
        if self.winner is not None:
            return False
        self.winner = ip
        return True

    def cancel_counts(self, ip: str) -> bool:
        """Whether the cancellation of the attempt to ``ip`` counts as that
        address's failure: only for the address that started first and lost
        to the other family (it was slow, perhaps black-holed); an attempt
        cancelled for any other reason (the caller gave up, or it started
        second and the first won) says nothing about the address."""
        return ip == self.first and self.winner is not None and self.winner != ip
