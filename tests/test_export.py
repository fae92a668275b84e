"""Statistics and their exporters: the Prometheus text format (checked with
prometheus_client's own parser), OpenTelemetry metrics and spans (checked
with the SDK's in-memory reader and exporter), the wait-time and
connect-time histograms, and the pool's repr."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

import conpool
from conpool._stats import BUCKETS, Histogram
from conpool.otel import OTelExporter
from helpers_pool import check_quiet, echo
from servers import EchoServer, refused_port

pytestmark = pytest.mark.anyio

Labels = frozenset[tuple[str, str]]


def labels_of(endpoint: conpool.Endpoint, **extra: str) -> Labels:
    tls = "false" if endpoint.tls is None else "true"
    return frozenset({"endpoint": str(endpoint), "tls": tls, **extra}.items())


async def contended(pool: conpool.Pool, ep: conpool.Endpoint, tasks: int, each: int) -> None:
    """``tasks`` tasks doing ``each`` echo requests at once, each holding its
    connection for a moment so that others wait."""

    async def client(task: int) -> None:
        for i in range(each):
            async with pool.connection(ep) as conn:
                msg = b"%d.%d;" % (task, i)
                assert await echo(conn, msg) == msg
                await anyio.sleep(0.002)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for task in range(tasks):
                tg.start_soon(client, task)


async def busy_pool_stats(
    echo_server: EchoServer, tracer: conpool.Tracer | None = None
) -> tuple[conpool.PoolStats, conpool.Endpoint, conpool.Endpoint, conpool.Endpoint]:
    """Run a pool through contention, churn and failures; return its stats
    (taken with the pool quiet) and its endpoints: by name, refused, refused TLS."""
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    named = conpool.Endpoint("pool.test", echo_server.port)
    port = refused_port()
    refused = conpool.Endpoint("127.0.0.1", port)
    refused_tls = conpool.Endpoint("127.0.0.1", port, tls=conpool.TLS())
    config = conpool.Config(
        max_connections_per_endpoint=2,
        max_connection_uses=3,
        connect_retries=1,
        retry_backoff=0,
    )
    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        await contended(pool, named, tasks=6, each=5)
        for ep in (refused, refused_tls):
            with pytest.raises(conpool.ConnectError):
                await pool.acquire(ep)
        stats = check_quiet(pool)
    return stats, named, refused, refused_tls


# --------------------------------------------------------------------------
# Prometheus text exposition format

_SAMPLE_LINE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+")


def parse(text: str) -> tuple[dict[str, Any], dict[tuple[str, Labels], float]]:
    """Families by name, and every sample by (name, labels)."""
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), f"a family is split: {names}"
    samples: dict[tuple[str, Labels], float] = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return {f.name: f for f in families}, samples


def check_histogram(
    samples: Mapping[tuple[str, Labels], float],
    name: str,
    labels: Labels,
    hist: conpool.HistogramStats,
) -> None:
    buckets = [samples[f"{name}_bucket", labels | {("le", le)}] for le in les(hist.bounds)]
    assert buckets == list(hist.cumulative())
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == samples[f"{name}_count", labels] == hist.count
    assert samples[f"{name}_sum", labels] == pytest.approx(hist.sum, rel=1e-9)


def les(bounds: Sequence[float]) -> list[str]:
    """The ``le`` label values, as the parser hands them back."""
    out = []
    for bound in bounds:
        text = repr(float(bound))
        out.append(text[:-2] if text.endswith(".0") else text)
    return [*out, "+Inf"]


async def test_prometheus_text_of_a_real_pool(echo_server: EchoServer) -> None:
    stats, named, refused, refused_tls = await busy_pool_stats(echo_server)
    text = conpool.prometheus_text(stats)
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP conpool_", "# TYPE conpool_")) or _SAMPLE_LINE.fullmatch(
            line
        ), line
    families, samples = parse(text)
    assert {name: f.type for name, f in families.items()} == {
        "conpool_connections": "gauge",
        "conpool_waiting": "gauge",
        "conpool_floor": "gauge",
        "conpool_created": "counter",
        "conpool_reused": "counter",
        "conpool_closed": "counter",
        "conpool_connect_failures": "counter",
        "conpool_refills": "counter",
        "conpool_refill_failures": "counter",
        "conpool_address_connections": "gauge",
        "conpool_address_created": "counter",
        "conpool_address_failures": "counter",
        "conpool_address_ejected": "gauge",
        "conpool_wait_seconds": "histogram",
        "conpool_connect_seconds": "histogram",
    }
    assert all(f.documentation for f in families.values())

    expected: dict[tuple[str, Labels], float] = {}
    for ep, e in stats.endpoints.items():
        labels = labels_of(ep)
        for state in ("active", "idle", "pending"):
            expected["conpool_connections", labels | {("state", state)}] = getattr(e, state)
        expected["conpool_waiting", labels] = e.waiting
        expected["conpool_floor", labels] = e.floor
        for field in (
            "created",
            "reused",
            "closed",
            "connect_failures",
            "refills",
            "refill_failures",
        ):
            expected[f"conpool_{field}_total", labels] = getattr(e, field)
        for ip, a in e.addresses.items():
            at = labels | {("address", ip)}
            for state in ("active", "idle", "pending"):
                expected["conpool_address_connections", at | {("state", state)}] = getattr(a, state)
            expected["conpool_address_created_total", at] = a.created
            expected["conpool_address_failures_total", at] = a.failures
            expected["conpool_address_ejected", at] = int(a.ejected)
        check_histogram(samples, "conpool_wait_seconds", labels, e.wait_time)
        check_histogram(samples, "conpool_connect_seconds", labels, e.connect_time)
    histogram_samples = {k: v for k, v in samples.items() if "_seconds_" in k[0]}
    assert {k: v for k, v in samples.items() if k not in histogram_samples} == expected
    assert len(histogram_samples) == len(stats.endpoints) * 2 * (len(BUCKETS) + 3)

    # The values this run must have produced, so the checks above mean something.
    e = stats.endpoints[named]
    assert samples["conpool_created_total", labels_of(named)] == e.created >= 2
    assert samples["conpool_reused_total", labels_of(named)] == e.reused > 0
    assert e.created + e.reused == 30
    assert samples["conpool_wait_seconds_count", labels_of(named)] == e.wait_time.count > 0
    assert samples["conpool_connect_seconds_count", labels_of(named)] == e.created
    assert samples["conpool_connect_failures_total", labels_of(refused)] == 1
    assert samples["conpool_connect_failures_total", labels_of(refused_tls)] == 1
    failures = labels_of(refused_tls, address="127.0.0.1")
    assert samples["conpool_address_failures_total", failures] == 2
    assert ("conpool_connections", labels_of(named, state="idle")) in samples


def test_prometheus_text_prefix_and_empty_pool() -> None:
    empty = conpool.PoolStats(
        endpoints=MappingProxyType({}), active=0, idle=0, pending=0, waiting=0, closed=False
    )
    families, samples = parse(conpool.prometheus_text(empty, prefix="my_app"))
    assert samples == {}
    assert all(name.startswith("my_app_") for name in families)


def _stats_with_address(endpoint: conpool.Endpoint, address: str) -> conpool.PoolStats:
    addr = conpool.AddressStats(
        active=1, idle=2, pending=0, created=3, failures=4, ejected=True, listed=True
    )
    ep = conpool.EndpointStats(
        active=1,
        idle=2,
        pending=0,
        waiting=0,
        created=3,
        reused=5,
        closed=0,
        connect_failures=0,
        addresses=MappingProxyType({address: addr}),
    )
    return conpool.PoolStats(
        endpoints=MappingProxyType({endpoint: ep}),
        active=1,
        idle=2,
        pending=0,
        waiting=0,
        closed=False,
    )


def test_prometheus_label_escaping() -> None:
    weird = 'we"ird\\addr\nnext line'
    endpoint = conpool.Endpoint("::1", 443, tls=conpool.TLS())
    text = conpool.prometheus_text(_stats_with_address(endpoint, weird))
    assert 'address="we\\"ird\\\\addr\\nnext line"' in text
    assert "\nnext line" not in text  # a raw newline would end the sample
    _families, samples = parse(text)
    at = labels_of(endpoint, address=weird)
    assert dict(at)["endpoint"] == "[::1]:443" and dict(at)["tls"] == "true"
    assert samples["conpool_address_created_total", at] == 3
    assert samples["conpool_address_failures_total", at] == 4
    assert samples["conpool_address_ejected", at] == 1
    assert samples["conpool_address_connections", at | {("state", "idle")}] == 2
    assert samples["conpool_reused_total", labels_of(endpoint)] == 5


@pytest.mark.parametrize("stats", [None, {}, "stats", 0])
def test_prometheus_text_rejects_what_is_not_stats(stats: object) -> None:
    with pytest.raises(TypeError, match="PoolStats"):
        conpool.prometheus_text(stats)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "prefix", ["", "1conpool", "con-pool", "con pool", "con.pool", "conpool\n", "conpool_é", "x²"]
)
def test_prometheus_text_rejects_bad_prefixes(prefix: str) -> None:
    """Metric names are ``[a-zA-Z_:][a-zA-Z0-9_:]*``: ASCII only."""
    empty = conpool.PoolStats(
        endpoints=MappingProxyType({}), active=0, idle=0, pending=0, waiting=0, closed=False
    )
    with pytest.raises(ValueError, match="prefix"):
        conpool.prometheus_text(empty, prefix=prefix)


# --------------------------------------------------------------------------
# OpenTelemetry


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "conpool"
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(points: Sequence[Any], **attrs: object) -> float:
    """Sum of the counter points whose attributes include ``attrs``."""
    return float(sum(p.value for p in points if attrs.items() <= dict(p.attributes).items()))


async def test_otel_exporter_metrics_and_spans(echo_server: EchoServer) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    spans = InMemorySpanExporter()
    tracing = TracerProvider(shutdown_on_exit=False)
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    exporter = OTelExporter(meter_provider=meters, tracer_provider=tracing)
    assert repr(exporter) == "OTelExporter()"
    tracer = conpool.Tracer()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    ep = conpool.Endpoint("pool.test", echo_server.port)
    port = refused_port()
    refused = conpool.Endpoint("127.0.0.1", port)
    config = conpool.Config(
        max_connections_per_endpoint=2, max_connection_uses=3, connect_retries=1, retry_backoff=0
    )
    wall_start = time.time_ns()
    try:
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            pool.add_hook("*", exporter)
            await contended(pool, ep, tasks=6, each=5)
            with pytest.raises(conpool.ConnectError):
                await pool.acquire(refused)
            stats = check_quiet(pool)
        wall_end = time.time_ns()
        points = metric_points(reader)
        finished = spans.get_finished_spans()
    finally:
        meters.shutdown()
        tracing.shutdown()
    e = stats.endpoints[ep]
    events = tracer.events()
    where = {"server.address": "pool.test", "server.port": echo_server.port}
    peer = {**where, "network.peer.address": "127.0.0.1"}

    # Counters agree with stats().
    assert total(points["conpool.connection.created"], **peer) == e.created >= 2
    assert total(points["conpool.connection.reused"], **peer) == e.reused > 0
    closed = points["conpool.connection.closed"]
    assert total(closed, **peer) == e.closed + e.idle  # the idle ones closed with the pool
    assert total(closed, **{"conpool.close.reason": "uses"}) == e.closed
    assert total(closed, **{"conpool.close.reason": "pool-closed"}) == e.idle
    failures = points["conpool.connect.failures"]
    assert total(failures) == total(failures, **{"server.port": port}) == 2
    assert total(failures, **{"server.address": "127.0.0.1", "network.peer.address": "127.0.0.1"})

    # Histograms, in seconds.
    (connect_hist,) = points["conpool.connect.duration"]
    assert dict(connect_hist.attributes) == peer
    assert connect_hist.count == e.created == e.connect_time.count
    assert connect_hist.sum == pytest.approx(e.connect_time.sum, rel=1e-6)
    granted = [ev for ev in events if ev.kind == "acquire.granted"]
    (wait_hist,) = points["conpool.acquire.wait"]
    assert dict(wait_hist.attributes) == where
    assert wait_hist.count == len(granted) == e.wait_time.count > 0

    # Spans with their real times and attributes.
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert set(by_name) == {"conpool.connect", "conpool.resolve", "conpool.acquire.wait"}
    ended = [ev for ev in events if ev.kind in ("connect.complete", "connect.failed")]
    connects = by_name["conpool.connect"]
    assert len(connects) == len(ended) == e.created + 2
    for span, ev in zip(connects, ended, strict=True):
        assert span.start_time is not None and span.end_time is not None
        # Wall-clock times (to within the offset's accuracy), start before end.
        assert wall_start - 1_000_000 <= span.start_time < span.end_time <= wall_end + 1_000_000
        assert span.end_time - span.start_time == ev.duration_ns
        attrs = dict(span.attributes or {})
        assert attrs["network.peer.address"] == "127.0.0.1"
        if ev.kind == "connect.complete":
            assert attrs == peer
            assert span.status.status_code == StatusCode.UNSET
        else:
            assert attrs == {
                "server.address": "127.0.0.1",
                "server.port": port,
                "network.peer.address": "127.0.0.1",
            }
            assert span.status.status_code == StatusCode.ERROR
            assert span.status.description == "[Errno 111] Connection refused"
    (resolve,) = by_name["conpool.resolve"]
    assert dict(resolve.attributes or {}) == where
    waits = by_name["conpool.acquire.wait"]
    assert [s.end_time - s.start_time for s in waits if s.end_time and s.start_time] == [
        ev.duration_ns for ev in granted
    ]


def test_otel_exporter_attributes_of_an_ipv6_endpoint() -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    spans = InMemorySpanExporter()
    tracing = TracerProvider(shutdown_on_exit=False)
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    try:
        exporter = OTelExporter(meter_provider=meters, tracer_provider=tracing)
        now = time.monotonic_ns()
        exporter(conpool.Event(now, "connect.complete", "[::1]:8443", "::1", 7, 1_000_000, ""))
        exporter(conpool.Event(now, "conn.close", "[::1]:8443", "::1", 7, 5_000_000, "idle"))
        points = metric_points(reader)
        (span,) = spans.get_finished_spans()
    finally:
        meters.shutdown()
        tracing.shutdown()
    attrs = {"server.address": "::1", "server.port": 8443, "network.peer.address": "::1"}
    assert dict(span.attributes or {}) == attrs
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time == 1_000_000
    assert abs(span.end_time - time.time_ns()) < 5e9  # wall clock, not monotonic
    (created,) = points["conpool.connection.created"]
    assert dict(created.attributes) == attrs and created.value == 1
    (closed,) = points["conpool.connection.closed"]
    assert dict(closed.attributes) == {**attrs, "conpool.close.reason": "idle"}


# --------------------------------------------------------------------------
# Histograms


def test_histogram_stats_cumulative_and_quantile() -> None:
    hist = conpool.HistogramStats(bounds=(0.1, 1.0), counts=(2, 1, 1), sum=3.5, count=4)
    assert hist.cumulative() == (2, 3, 4)
    assert hist.quantile(0) == 0.1  # the lowest bucket with data
    assert hist.quantile(0.5) == 0.1
    assert hist.quantile(0.75) == 1.0
    assert hist.quantile(0.76) == math.inf  # above every bound
    assert hist.quantile(1) == math.inf
    sparse = conpool.HistogramStats(bounds=(0.1, 1.0, 10.0), counts=(0, 0, 3, 0), sum=6, count=3)
    assert sparse.cumulative() == (0, 0, 3, 3)
    assert sparse.quantile(0) == sparse.quantile(1) == 10.0
    empty = conpool.HistogramStats(bounds=(0.1,), counts=(0, 0), sum=0.0, count=0)
    assert empty.cumulative() == (0, 0)
    assert math.isnan(empty.quantile(0.5))
    for q in (-0.01, 1.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="q"):
            hist.quantile(q)


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    hist = Histogram()
    for seconds in (0.0, BUCKETS[0], BUCKETS[0] * 1.01, BUCKETS[-1], BUCKETS[-1] + 1, 1e9):
        hist.observe(seconds)
    snap = hist.snapshot()
    assert snap.bounds == BUCKETS and len(snap.counts) == len(BUCKETS) + 1
    assert snap.counts[0] == 2  # 0 and exactly the first bound
    assert snap.counts[1] == 1
    assert snap.counts[len(BUCKETS) - 1] == 1  # exactly the last bound
    assert snap.counts[-1] == 2  # above every bound
    assert snap.count == 6 == snap.cumulative()[-1]
    assert snap.sum == pytest.approx(sum((0.0, BUCKETS[0], BUCKETS[0] * 1.01, 10.0, 11.0, 1e9)))
    hist.observe(1.0)
    assert snap.count == 6  # a snapshot never changes
    assert list(BUCKETS) == sorted(BUCKETS)


async def test_wait_and_connect_time_histograms(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=2, max_connection_uses=4)
    async with conpool.Pool(config, tracer=tracer) as pool:
        fresh = pool.stats()
        await contended(pool, ep, tasks=8, each=5)
        e = check_quiet(pool).endpoints[ep]
    # A wait that times out counts too.
    timed = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.03)
    async with conpool.Pool(timed) as other:
        async with other.connection(ep):
            with pytest.raises(conpool.PoolTimeout):
                await other.acquire(ep)
        after_timeout = other.stats().endpoints[ep].wait_time
    assert fresh.endpoints == {}
    events = tracer.events()
    queued = [ev for ev in events if ev.kind == "acquire.queued"]
    granted = [ev for ev in events if ev.kind == "acquire.granted"]
    connected = [ev for ev in events if ev.kind == "connect.complete"]
    assert len(queued) == len(granted) == e.wait_time.count > 0
    assert e.wait_time.sum == pytest.approx(sum(ev.duration_ns or 0 for ev in granted) / 1e9)
    assert e.wait_time.cumulative()[-1] == e.wait_time.count
    assert 0 < e.wait_time.quantile(0.5) <= e.wait_time.quantile(0.99)
    assert len(connected) == e.connect_time.count == e.created >= 2
    assert e.connect_time.sum == pytest.approx(sum(ev.duration_ns or 0 for ev in connected) / 1e9)
    assert 0 < e.connect_time.quantile(1.0) <= 10.0
    assert after_timeout.count == 1 and after_timeout.sum >= 0.025


# --------------------------------------------------------------------------
# repr and snapshots


async def test_pool_repr(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    pool = conpool.Pool(conpool.Config(max_connections_per_endpoint=3))
    assert repr(pool) == (
        "<conpool.Pool not entered endpoints=0 active=0 idle=0 waiting=0 limit=3/endpoint>"
    )
    async with pool:
        a = await pool.acquire(ep)
        b = await pool.acquire(ep)
        await pool.release(b)
        assert repr(pool) == (
            "<conpool.Pool open endpoints=1 active=1 idle=1 waiting=0 limit=3/endpoint>"
        )
        await pool.release(a)
    assert repr(pool).startswith("<conpool.Pool closed endpoints=1 active=0 idle=0 ")


async def test_stats_snapshot_is_frozen_and_detached(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool() as pool:
        async with pool.connection(ep):
            during = pool.stats()
        after = pool.stats()
    assert (during.active, during.endpoints[ep].active) == (1, 1)
    assert (after.active, after.idle, after.endpoints[ep].idle) == (0, 1, 1)
    with pytest.raises(AttributeError):
        during.active = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        during.endpoints[ep].addresses["x"] = during.endpoints[ep].addresses["127.0.0.1"]  # type: ignore[index]
    assert during.endpoints[ep].connect_time.count == 1
    assert during.endpoints[ep].wait_time.count == 0
