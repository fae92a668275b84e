"""Faults only root can make: one of pool.test's four nginx addresses drops
SYNs (connect timeouts) or answers them with resets, by an iptables rule on
that loopback address.  The pool must keep every request succeeding, eject
the address, carry the load on the other three, and take it back once the
rule is gone.

These tests skip without root locally and fail under CI (``need_root``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import anyio
import pytest

import conpool
from helpers_faults import TAG, IptablesRule, drop_syns, remove_stray_rules, reset_syns
from helpers_pool import eventually
from servers import POOL_ADDRESSES, DnsmasqServer, NginxServer, can_connect, need, need_root
from test_balancing import dns_resolver, ejected, exchange, get, holding, kinds

pytestmark = [pytest.mark.root, pytest.mark.realserver]

FAULTY = "127.0.0.14"
GOOD = POOL_ADDRESSES[:3]


@pytest.fixture
def iptables() -> Iterator[None]:
    """Root and iptables, with no rule of ours left over before or after."""
    need_root("iptables rules on loopback")
    need("iptables", "fault injection")
    remove_stray_rules()
    yield
    assert remove_stray_rules() == 0, "a test left an iptables rule behind"


def test_rules_are_added_removed_and_cleaned_up(iptables: None, nginx4: NginxServer) -> None:
    rule = drop_syns(FAULTY, nginx4.port)
    assert not rule.present()
    with rule:
        assert rule.present()
        assert not can_connect(FAULTY, nginx4.port, timeout=0.2)  # the SYN vanished
        assert can_connect("127.0.0.13", nginx4.port)  # only that address
    assert not rule.present()
    assert can_connect(FAULTY, nginx4.port)
    # A rule a crashed run left behind is found by its tag and removed.
    stray = IptablesRule(FAULTY, nginx4.port, ["-j", "DROP"])
    stray.add()
    assert TAG in repr(stray)
    assert remove_stray_rules() == 1
    assert not stray.present()


@pytest.mark.anyio
async def test_dropped_syns_time_out_eject_and_the_other_three_carry_the_load(
    iptables: None, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(
        max_connections_per_endpoint=24,
        connect_timeout=0.3,
        connect_retries=3,
        retry_backoff=0.01,
        eject_after_failures=2,
        eject_time=1.5,
        eject_time_max=10.0,
    )
    todo = iter(range(160))

    async def client(pool: conpool.Pool) -> None:
        for _ in todo:
            assert await get(pool, endpoint) == b"ok\n"

    async def dialling_client(pool: conpool.Pool, n: int) -> None:
        for _ in range(n):
            async with pool.connection(endpoint) as conn:
                assert await exchange(conn) == b"ok\n"
                await conn.aclose()  # so that the next request dials

    with drop_syns(FAULTY, nginx4.port) as rule:
        async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
            # 160 requests from 16 tasks: the 16 first dials spread over all
            # four addresses; those to the faulty one time out after 0.3 s and
            # go elsewhere.  No request fails.
            start = time.monotonic()
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    for _ in range(16):
                        tg.start_soon(client, pool)
            first_phase = time.monotonic() - start
            stats = pool.stats().endpoints[endpoint]
            bad = stats.addresses[FAULTY]
            assert (bad.created, bad.active, bad.idle, bad.pending) == (0, 0, 0, 0)
            assert bad.failures >= 2 and bad.ejected
            assert ejected(pool, endpoint) == {FAULTY}
            assert stats.connect_failures == 0
            timeouts = [d for k, ip, d in kinds(tracer, "connect.failed") if ip == FAULTY]
            assert timeouts and all(d == "TCP connect timed out after 0.3 s" for d in timeouts)
            assert [ip for k, ip, d in kinds(tracer, "connect.failed")] == [FAULTY] * len(timeouts)
            assert kinds(tracer, "address.eject") == [
                ("address.eject", FAULTY, "2 consecutive failures; out for 1.5 s")
            ]
            assert first_phase >= 0.3  # someone waited out a timeout
            failures = bad.failures

            # Throughput recovers: with the address ejected, 8 tasks make 120
            # requests, each on a connection closed after it (all but the 16
            # idle ones are new), and none waits for a timeout.
            start = time.monotonic()
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(dialling_client, pool, 15)
            second_phase = time.monotonic() - start
            stats = pool.stats().endpoints[endpoint]
            assert stats.addresses[FAULTY].failures == failures
            assert stats.connect_failures == 0
            assert (stats.idle, stats.active) == (0, 0)
            assert second_phase < 0.9, second_phase  # three timeouts' worth, for 100+ dials
            print(f"phase 1 (timeouts): 160 requests in {first_phase:.3f} s; "
                  f"phase 2 (ejected): 120 requests in {second_phase:.3f} s")  # fmt: skip

            # The fault is lifted.  Once its ejection time is over the address
            # is back in rotation: four dials go to the four addresses.
            rule.remove()
            await eventually(lambda: not ejected(pool, endpoint), 3.0, what="re-admitted")
            async with holding(pool, endpoint, 4) as conns:
                assert sorted(c.address[0] for c in conns) == list(POOL_ADDRESSES)
                for conn in conns:
                    assert await exchange(conn) == b"ok\n"
            stats = pool.stats().endpoints[endpoint]
            assert stats.addresses[FAULTY].created == 1
            assert stats.addresses[FAULTY].failures == failures
            assert not stats.addresses[FAULTY].ejected
    assert kinds(tracer, "address.readmit") == [("address.readmit", FAULTY, "ejection time over")]
    lines = nginx4.wait_for_log(160 + 120 + 4)
    assert len(lines) == 284
    served = Counter(line.server_addr for line in lines[:280])
    # nginx's view: until the fault was lifted the faulty address saw nothing,
    # and the other three shared the load (each at least a fifth of it).
    assert FAULTY not in served
    for ip in GOOD:
        assert served[ip] >= 0.2 * 280, served
    assert sorted(line.server_addr for line in lines[280:]) == list(POOL_ADDRESSES)


@pytest.mark.anyio
async def test_reset_syns_eject_then_the_address_comes_back(
    iptables: None, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(
        connect_retries=3,
        retry_backoff=0.0,
        eject_after_failures=2,
        eject_time=0.3,
        eject_time_max=5.0,
    )
    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        with reset_syns(FAULTY, nginx4.port):
            # Fresh dials until the faulty address has failed twice; none of
            # the requests sees the refusals.
            with anyio.fail_after(5):
                while FAULTY not in ejected(pool, endpoint):
                    async with pool.connection(endpoint) as conn:
                        assert await exchange(conn) == b"ok\n"
                        assert conn.address[0] != FAULTY
                        await conn.aclose()
            stats = pool.stats().endpoints[endpoint]
            assert stats.addresses[FAULTY].failures == 2
            assert stats.connect_failures == 0
            refused = [d for k, ip, d in kinds(tracer, "connect.failed")]
            assert refused == ["[Errno 111] Connection refused"] * 2
        await eventually(lambda: not ejected(pool, endpoint), 2.0, what="re-admitted")
        # Back in rotation and healthy: four dials go to the four addresses.
        async with holding(pool, endpoint, 4) as conns:
            assert sorted(c.address[0] for c in conns) == list(POOL_ADDRESSES)
            for conn in conns:
                assert await exchange(conn) == b"ok\n"
        stats = pool.stats().endpoints[endpoint]
        assert (stats.addresses[FAULTY].created, stats.addresses[FAULTY].failures) == (1, 2)
    assert [(k, ip) for k, ip, _ in kinds(tracer, "address.")] == [
        ("address.eject", FAULTY),
        ("address.readmit", FAULTY),
    ]
    lines = nginx4.wait_for_log(1)
    assert [line.server_addr for line in lines].count(FAULTY) == 1
