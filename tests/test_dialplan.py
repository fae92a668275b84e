"""How one dial proceeds (conpool._dialplan), driven directly: no event loop,
no sockets, no clock.  What the scripted tier (test_scripted.py) then checks
in time is decided here: which errors are worth a retry, how long the backoff
is, when a dial gives up, whether a round races two address families and what
a lost race counts as."""

from __future__ import annotations

import random
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conpool._dialplan import (
    DialPlan,
    Race,
    backoff_delay,
    family,
    retryable,
    should_race,
    tls_failure,
)

V4, V4B, V6, V6B = "192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"


# -- what is worth a retry ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError("TCP connect timed out after 1 s"), True),
        (OSError(113, "no route to host"), True),
        (ssl.SSLCertVerificationError("certificate verify failed"), False),
        (ssl.SSLError("wrong version number"), False),
        (ValueError("a bug"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_retryable(exc: BaseException, expected: bool) -> None:
    assert retryable(exc) is expected


def test_tls_failure_names_handshake_errors_only() -> None:
    assert tls_failure(ssl.SSLError("bad"))
    assert tls_failure(TimeoutError("TLS handshake timed out after 2 s"))
    assert not tls_failure(TimeoutError("TCP connect timed out after 2 s"))
    assert not tls_failure(ConnectionRefusedError(111, "refused"))


# -- backoff ------------------------------------------------------------------------------


@given(
    retry=st.integers(1, 200),
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 100.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_in_the_full_jitter_window(
    retry: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(retry, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(retry - 1, 62))


def test_backoff_spreads_over_the_whole_window() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, 0.1, 10.0, rng) for _ in range(2000)]
    # Window [0, 0.4]: full jitter, not "ceiling plus a little".
    assert min(delays) < 0.02 and max(delays) > 0.38
    assert 0.18 < sum(delays) / len(delays) < 0.22


def test_backoff_without_a_base_is_no_wait() -> None:
    assert backoff_delay(5, 0.0, 10.0, random.Random(0)) == 0.0


# -- the rounds of a dial ------------------------------------------------------------------


def plan(retries: int = 3, base: float = 0.1, cap: float = 1.0, seed: int = 1) -> DialPlan:
    return DialPlan(retries, base, cap, random.Random(seed))


def test_a_dial_has_one_round_plus_its_retries_with_growing_backoff() -> None:
    p = plan(retries=3, base=0.1, cap=0.25)
    assert p.next_round() == 0.0 and p.round == 1
    for ceiling in (0.1, 0.2, 0.25):
        p.failed(V4, ConnectionRefusedError(111, "refused"))
        delay = p.next_round()
        assert delay is not None and 0.0 <= delay <= ceiling
    assert p.round == 4
    p.failed(V4, ConnectionRefusedError(111, "refused"))
    assert p.next_round() is None  # 1 + 3 rounds used
    assert p.tried == [V4] * 4
    assert p.context("tcp://x:80", 80) == [
        f"connecting to tcp:{V4}:80",
        "connecting to tcp://x:80",
        "after 3 retry attempts (4 attempts in all)",
    ]


def test_the_backoff_draws_from_the_plan_rng_in_order() -> None:
    p, rng = plan(seed=42), random.Random(42)
    p.next_round()
    p.failed(V4, OSError("x"))
    assert p.next_round() == backoff_delay(1, 0.1, 1.0, rng)
    p.failed(V4, OSError("x"))
    assert p.next_round() == backoff_delay(2, 0.1, 1.0, rng)


def test_no_retries_means_one_round() -> None:
    p = plan(retries=0)
    assert p.next_round() == 0.0
    p.failed(V6, ConnectionRefusedError(111, "refused"))
    assert p.next_round() is None
    assert p.context("tcp://x:443", 443) == [
        f"connecting to tcp:[{V6}]:443",
        "connecting to tcp://x:443",
    ]


def test_a_round_of_errors_no_retry_can_fix_ends_the_dial() -> None:
    p = plan(retries=5)
    p.next_round()
    p.failed(V4, ssl.SSLCertVerificationError("certificate verify failed"))
    assert p.next_round() is None
    assert p.round == 1


def test_one_retryable_error_in_a_race_is_enough_to_go_on() -> None:
    p = plan(retries=1)
    p.next_round()
    p.failed(V4, ssl.SSLCertVerificationError("certificate verify failed"))
    p.failed(V6, ConnectionRefusedError(111, "refused"))
    assert p.next_round() is not None
    # Only the round's own errors decide: an earlier retryable one does not.
    p.failed(V4, ssl.SSLCertVerificationError("certificate verify failed"))
    assert p.next_round() is None
    # Two rounds, three attempts: a race makes two, and "in all" counts errors.
    assert p.context("e", 1)[-1] == "after 1 retry attempt (3 attempts in all)"


# -- Happy Eyeballs ------------------------------------------------------------------------


def test_only_a_name_with_both_families_races() -> None:
    assert family(V4) == 4 and family(V6) == 6
    assert should_race([V4, V6])
    assert should_race([V6, V4B, V4])
    assert not should_race([V4, V4B])
    assert not should_race([V6, V6B])
    assert not should_race([])


def test_the_second_attempt_uses_the_other_family() -> None:
    assert Race(V4).second_family() == 6
    assert Race(V6).second_family() == 4


def test_the_first_to_connect_wins_and_a_later_one_loses() -> None:
    race = Race(V6)
    assert race.won(V4)
    assert not race.won(V6)  # connected too, after: closed unused
    assert race.winner == V4


def test_a_first_address_that_loses_to_the_other_family_counts_a_failure() -> None:
    race = Race(V6)
    race.second = V4
    race.won(V4)
    assert race.cancel_counts(V6)  # started first, was slower: a failure


def test_other_cancellations_say_nothing_about_the_address() -> None:
    # The first won: the second's cancellation is not its fault.
    race = Race(V6)
    race.second = V4
    race.won(V6)
    assert not race.cancel_counts(V4)
    # Nobody won (the caller gave up): neither counts.
    idle = Race(V6)
    idle.second = V4
    assert not idle.cancel_counts(V6) and not idle.cancel_counts(V4)
