"""Run scenarios against the pool and turn what happened into plain data.

One scenario is one :class:`conpool.Pool` with a :class:`conpool.Tracer`,
``concurrency`` client tasks that send requests back to back (or with a
think time) until the scenario's time is up, and a sampler that every few
tens of milliseconds reads ``pool.stats()`` (connections per address) and
drains the tracer into a :class:`TraceDigest` (connection lifetimes, close
reasons, connect failures).  Everything the report shows comes out of
:func:`run_scenario` as a JSON-ready dict: the same dict ``--json`` writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import math
import os
import platform
import random
import ssl
import sys
import time
import traceback
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import sniffio

import conpool

from . import analysis, chrome
from .measure import (
    GCWatch,
    HandoffTracer,
    LoopProbe,
    Raw,
    Requests,
    Slot,
    StressTracer,
    cpu_delta,
    cpu_snapshot,
    current_slot,
    machine_snapshot,
)
from .protocols import Protocol, make_protocol
from .scenarios import Action, Scenario
from .servers import STRESS_ADDRESSES, STRESS_NAME, ServerError, ServerProcess

__all__ = [
    "DRIVERS",
    "RUNNERS",
    "Driver",
    "RunControl",
    "Target",
    "TraceDigest",
    "environment",
    "error_text",
    "log_histogram",
    "percentiles",
    "run_scenario",
]

#: Seconds a single request (acquire included) may take before it counts as an error.
REQUEST_TIMEOUT = 5.0
#: Seconds after the end of a scenario before requests still in flight are cancelled.
GRACE = REQUEST_TIMEOUT + 1.0
#: Ring buffer size; the sampler drains it many times a second, so it never fills.
TRACE_CAPACITY = 1 << 17

Progress = Callable[[str, float, int, int], None]

#: Events kept for ``--trace`` per scenario (beyond that the file is cut short).
KEEP_EVENTS = 2_000_000
#: Acquire waits and connects kept per scenario for the report's timeline.
KEEP_SPANS = 200_000


#: One request: fills the slot's ``got_ns``/``xend_ns`` when it can (else the
#: pool's hand-out and release times are used) and returns the (ip, conn_id)
#: it used, or ``("", 0)`` to take them from the trace too.
Request = Callable[[Slot], Awaitable[tuple[str, int]]]
#: A driver: ``driver(pool, endpoint, protocol)`` is an async context manager
#: giving the request function of a scenario's run (set up once, shared by
#: every client).
Driver = Callable[[conpool.Pool, conpool.Endpoint, Protocol], AbstractAsyncContextManager[Request]]


@contextlib.asynccontextmanager
async def pool_driver(
    pool: conpool.Pool, endpoint: conpool.Endpoint, proto: Protocol
) -> AsyncIterator[Request]:
    """``pool.connection(endpoint)`` and the protocol's exchange over it."""
    mono = time.monotonic_ns

    async def request(slot: Slot) -> tuple[str, int]:
        async with pool.connection(endpoint) as conn:
            slot.got_ns = mono()
            await proto.exchange(conn)
            slot.xend_ns = mono()
            return conn.address[0], conn.id

    yield request


#: The drivers a scenario may name (``Scenario.driver``); add to it to drive
#: the pool another way (through an HTTP client, say).
DRIVERS: dict[str, Driver] = {"pool": pool_driver}

#: Scenarios whose ``driver`` names one of these are run by it instead of
#: :func:`run_scenario` (the ``fleet`` scenario: many processes); it takes
#: the same keyword arguments and returns the same kind of dict.
RUNNERS: dict[str, Callable[..., Awaitable[dict[str, Any] | None]]] = {}


@dataclasses.dataclass
class Target:
    """A real server given with ``--target``."""

    host: str  # the socket's path for a Unix socket target
    port: int  # 0 for a Unix socket target
    protocol: str


@dataclasses.dataclass
class RunControl:
    """Shared between the runner and the Ctrl-C handler."""

    stop: bool = False
    scope: anyio.CancelScope | None = None

    def request_stop(self) -> None:
        self.stop = True
        if self.scope is not None:
            self.scope.cancel()


# ----------------------------------------------------------------------------
# Numbers


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """min, mean, p50, p90, p99 and max of ``values`` (nearest-rank percentiles)."""
    n = len(values)
    if n == 0:
        return {"min": None, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100.0 * n) - 1)]

    return {
        "min": ordered[0],
        "mean": math.fsum(ordered) / n,
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
    }


def log_histogram(
    series: dict[str, Sequence[float]], *, per_decade: int = 10, floor: float = 0.001
) -> dict[str, Any]:
    """Counts of each series in shared logarithmic bins.

    Values below ``floor`` (1 µs when the values are milliseconds) count in
    the first bin, so a zero wait still shows.

    :returns: ``{"edges": [...], name: [counts...], ...}`` with
        ``len(edges) == len(counts) + 1``.
    """
    values = [v for vs in series.values() for v in vs]
    if not values:
        return {"edges": [], **{name: [] for name in series}}
    low = max(min(values), floor)
    high = max(max(values), low * 1.0001)
    k0 = math.floor(math.log10(low) * per_decade)
    k1 = math.ceil(math.log10(high) * per_decade)
    if k1 <= k0:
        k1 = k0 + 1
    edges = [10 ** (k / per_decade) for k in range(k0, k1 + 1)]
    out: dict[str, Any] = {"edges": edges}
    nbins = len(edges) - 1
    for name, vs in series.items():
        counts = [0] * nbins
        for v in vs:
            i = 0 if v <= low else int(math.log10(v) * per_decade - k0)
            counts[min(max(i, 0), nbins - 1)] += 1
        out[name] = counts
    return out


def _ms(values: array[int]) -> list[float]:
    return [v / 1e6 for v in values]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rounded(d: dict[str, float | None], digits: int = 4) -> dict[str, float | None]:
    return {k: _round(v, digits) for k, v in d.items()}


# ----------------------------------------------------------------------------
# Errors


_HINTS = {
    "EndOfStream": "the server closed the connection before answering",
    "BrokenResourceError": "the connection broke (reset by the server)",
    "ClosedResourceError": "the connection was already closed",
}


def _name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    if module.startswith("anyio"):
        module = "anyio"
    return f"{module}.{cls.__qualname__}"


def error_text(exc: BaseException) -> str:
    """The error and its causes, one per line, as a user would want to read them."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    prefix = ""
    while current is not None and id(current) not in seen and len(lines) < 8:
        seen.add(id(current))
        message = str(current) or _HINTS.get(type(current).__name__, "")
        text = f"{_name(current)}: {message}" if message else _name(current)
        lines.append(prefix + text.replace("\n", "\n" + " " * len(prefix)))
        prefix = "caused by "
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return "\n".join(lines)


class _Errors:
    """Errors grouped by their full text."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}

    def add(self, exc: BaseException, t_s: float) -> None:
        text = error_text(exc)
        group = self.groups.get(text)
        if group is None:
            tb = "".join(traceback.format_exception(exc))
            self.groups[text] = {
                "type": _name(exc),
                "message": text,
                "count": 1,
                "first_s": round(t_s, 4),
                "last_s": round(t_s, 4),
                "traceback": tb[-6000:],
            }
        else:
            group["count"] += 1
            group["last_s"] = round(t_s, 4)

    def add_note(self, kind: str, message: str, t_s: float) -> None:
        self.groups[message] = {
            "type": kind,
            "message": message,
            "count": 1,
            "first_s": round(t_s, 4),
            "last_s": round(t_s, 4),
            "traceback": "",
        }

    def result(self) -> list[dict[str, Any]]:
        return sorted(self.groups.values(), key=lambda g: (-g["count"], g["first_s"]))


# ----------------------------------------------------------------------------
# The tracer's events, digested as they come


class TraceDigest:
    """Folds :class:`conpool.Event` s into what the report shows.

    :param t0_ns: the scenario's start, in :func:`time.monotonic_ns` (the
        tracer's clock); times come out in seconds since then.
    """

    def __init__(self, t0_ns: int, *, keep: bool = False) -> None:
        self.t0_ns = t0_ns
        self.kinds: Counter[str] = Counter()
        self.open: dict[int, tuple[str, float]] = {}
        self.lifetimes: list[list[Any]] = []
        self.close_reasons: Counter[str] = Counter()
        self.handouts: Counter[str] = Counter()  # conn.release per address
        self.created: Counter[str] = Counter()  # connect.complete per address
        self.failures: Counter[tuple[str, str]] = Counter()  # (address, detail)
        self.connect_ms: list[float] = []
        self.address_events: list[list[Any]] = []  # [t_s, kind, address, detail]
        self.dropped = 0
        self.events = 0
        self.waits: list[list[float]] = []  # [start_s, end_s] of acquire waits
        self.connects: list[list[Any]] = []  # [address, start_s, end_s, "ok"|"failed"]
        #: Every raw event, for --trace (None: not kept).
        self.keep: list[Raw] | None = [] if keep else None

    def feed(self, events: Sequence[Raw], counts: dict[str, int] | None = None) -> None:
        """Fold raw events: ``(ts_ns, kind, endpoint, address, conn_id, duration_ns, detail)``;
        ``counts``, when given, holds the kinds of every event, returned or not
        (see :meth:`StressTracer.take`)."""
        kinds = self.kinds
        if counts is None:
            self.events += len(events)
            for ev in events:
                kinds[ev[1]] += 1
        else:
            for key, c in counts.items():
                kind, at, ip = key.partition("@")
                if at:
                    self.handouts[ip] += c
                else:
                    kinds[kind] += c
                    self.events += c
        if self.keep is not None and len(self.keep) < KEEP_EVENTS:
            self.keep.extend(events[: KEEP_EVENTS - len(self.keep)])
        t0 = self.t0_ns
        for ts, kind, _ep, address, conn_id, duration_ns, detail in events:
            if kind == "conn.release":
                self.handouts[address] += 1
            elif kind == "acquire.granted":
                if len(self.waits) < KEEP_SPANS:
                    self.waits.append(
                        [round((ts - (duration_ns or 0) - t0) / 1e9, 6), round((ts - t0) / 1e9, 6)]
                    )
            elif kind == "connect.complete":
                self.open[conn_id] = (address, (ts - t0) / 1e9)
                self.created[address] += 1
                if duration_ns is not None:
                    self.connect_ms.append(duration_ns / 1e6)
                    self._connect_span(address, ts, duration_ns, "ok")
            elif kind == "conn.close":
                reason = detail or "?"
                self.close_reasons[reason] += 1
                opened = self.open.pop(conn_id, None)
                if opened is None:
                    # Its connect event was dropped or came before the digest.
                    address_, start = address, 0.0
                else:
                    address_, start = opened
                self.lifetimes.append(
                    [conn_id, address_, round(start, 5), round((ts - t0) / 1e9, 5), reason]
                )
            elif kind == "connect.failed":
                self.failures[(address, detail)] += 1
                if duration_ns is not None:
                    self._connect_span(address, ts, duration_ns, "failed")
            elif kind.startswith("address."):
                self.address_events.append([round((ts - t0) / 1e9, 5), kind, address, detail])

    def _connect_span(self, address: str, ts: int, duration_ns: int, outcome: str) -> None:
        """Keep a connect attempt's span (seconds since t0), up to KEEP_SPANS."""
        if len(self.connects) < KEEP_SPANS:
            start = round((ts - duration_ns - self.t0_ns) / 1e9, 6)
            self.connects.append([address, start, round((ts - self.t0_ns) / 1e9, 6), outcome])

    def drain(self, tracer: conpool.Tracer) -> None:
        """Take every new event out of ``tracer`` (no await in between: atomic on the loop)."""
        if isinstance(tracer, StressTracer):
            raw, counts, lost = tracer.take(full=self.keep is not None)
            self.dropped += lost
            # With every event returned, feed counts them itself.
            self.feed(raw, counts if self.keep is None else None)
            return
        self.dropped += tracer.dropped
        raw = [
            (e.ts_ns, e.kind, e.endpoint, e.address, e.conn_id, e.duration_ns, e.detail)
            for e in tracer.events()
        ]
        tracer.clear()
        self.feed(raw)

    def finish(self) -> None:
        """Connections still open at the end keep a lifetime with no end."""
        for conn_id, (address, start) in sorted(self.open.items()):
            self.lifetimes.append([conn_id, address, round(start, 5), None, "open"])
        self.open.clear()
        self.lifetimes.sort(key=lambda lt: (lt[2], lt[0]))


# ----------------------------------------------------------------------------
# The environment


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(backend: str) -> dict[str, Any]:
    """What the run ran on; call it inside the event loop."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()
        loop_name = f"{type(loop).__module__}.{type(loop).__qualname__}"
        if type(loop).__module__.startswith("uvloop"):
            loop_name += f" (uvloop {_version('uvloop')})"
    else:
        loop_name = f"trio {_version('trio')}"
    return {
        "conpool": conpool.__version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "anyio": _version("anyio"),
        "backend": backend,
        "async_library": library,
        "event_loop": loop_name,
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "executable": sys.executable,
    }


def _jsonable(value: Any) -> Any:
    """A configuration value as JSON keeps it, the same once saved and read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # a Proxy, say: its text


# Callables: not data, and not JSON.
_HOOK_FIELDS = frozenset({"health_check", "on_connect", "reset"})


def config_dict(config: conpool.Config) -> dict[str, Any]:
    return {
        f.name: _jsonable(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.name not in _HOOK_FIELDS
    }


# ----------------------------------------------------------------------------
# One scenario


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


def _endpoint(
    scenario: Scenario, servers: ServerProcess | None, target: Target | None
) -> tuple[conpool.Endpoint, conpool.Resolver | None, list[str]]:
    """The endpoint, the resolver and the addresses a scenario connects to."""
    if scenario.port == "target":
        assert target is not None
        if target.port == 0:
            unix = conpool.Endpoint.unix(target.host)
            return unix, None, [target.host]
        endpoint = conpool.Endpoint(target.host, target.port)
        if endpoint.is_ip:
            return endpoint, None, [endpoint.host]
        return endpoint, conpool.SystemResolver(), []
    assert servers is not None
    port = servers.ports[scenario.port]
    tls = None
    if scenario.port == "tls":
        ctx = ssl.create_default_context()
        assert servers.ca_pem is not None
        ctx.load_verify_locations(cadata=servers.ca_pem)
        tls = conpool.TLS(context=ctx)
    resolver = conpool.StaticResolver({STRESS_NAME: list(STRESS_ADDRESSES)})
    return conpool.Endpoint(STRESS_NAME, port, tls=tls), resolver, list(STRESS_ADDRESSES)


async def run_scenario(
    scenario: Scenario,
    *,
    duration: float,
    concurrency: int,
    servers: ServerProcess | None,
    target: Target | None,
    control: RunControl,
    progress: Progress | None = None,
    trace_path: str | None = None,
    budget: conpool.RedisBudget | None = None,
    start_ns: int | None = None,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run one scenario for ``duration`` seconds with ``concurrency`` clients.

    :param trace_path: where to write the scenario's Chrome/Perfetto trace (None: nowhere).
    :param budget: the pool's fleet budget (a process of the ``fleet`` scenario).
    :param start_ns: start at this :func:`time.monotonic_ns` (processes of a
        fleet start together), not at once.
    :param raw: filled with every request's latency and parts (ns), for a
        caller that merges the runs of many processes.
    :returns: the scenario's results, or None when it was interrupted.
    """
    custom = RUNNERS.get(scenario.driver)
    if custom is not None:
        return await custom(
            scenario,
            duration=duration,
            concurrency=concurrency,
            servers=servers,
            target=target,
            control=control,
            progress=progress,
            trace_path=trace_path,
        )
    endpoint, resolver, addresses = _endpoint(scenario, servers, target)
    protocol_name = scenario.protocol or (target.protocol if target else "echo")
    http_host = target.host if target is not None else STRESS_NAME
    proto: Protocol = make_protocol(protocol_name, http_host)
    config = conpool.Config(**scenario.config)
    driver = DRIVERS.get(scenario.driver)
    if driver is None:
        raise ValueError(f"scenario {scenario.name!r}: no driver {scenario.driver!r}")
    tracer = (StressTracer if scenario.driver == "pool" else HandoffTracer)(TRACE_CAPACITY)
    # pool.stats() is cheap: sample it finely enough to see bursts of tens
    # of milliseconds; throughput is counted in coarser buckets to be readable.
    interval = min(max(duration / 150.0, 0.01), 0.05)
    bucket = min(max(duration / 120.0, 0.01), 0.1)

    latency = array("q")
    acquire = array("q")
    done = array("q")  # completion times, ns since t0
    failed = array("q")  # error times, ns since t0
    errors = _Errors()
    markers: list[dict[str, Any]] = []
    samples_t: list[float] = []
    samples_addr: dict[str, dict[str, list[int]]] = {}
    samples_waiting: list[int] = []
    down: set[str] = set()
    server_before: dict[str, Any] | None = None
    if servers is not None and scenario.port != "target":
        server_before = await _call(servers.status)

    # What earlier scenarios left (their results, the servers' handles) is
    # not this scenario's garbage: frozen, the collector's full passes during
    # the run scan only what the run allocates.
    gc.collect()
    gc.freeze()
    if start_ns is not None:
        await anyio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    t0_ns = time.monotonic_ns()
    deadline_ns = t0_ns + int(duration * 1e9)
    digest = TraceDigest(t0_ns, keep=trace_path is not None)
    reqs = Requests()
    probe = LoopProbe(t0_ns)
    gcw = GCWatch(t0_ns)
    sampler_runs: list[tuple[int, int]] = []  # (start, duration) ns since t0
    server_pid = servers.pid if servers is not None else None
    cpu_before = (cpu_snapshot(), cpu_snapshot(server_pid), machine_snapshot())
    finished_ns = 0
    final_stats: conpool.PoolStats | None = None
    interrupted = False

    async with (
        conpool.Pool(config, resolver=resolver, tracer=tracer, budget=budget) as pool,
        driver(pool, endpoint, proto) as request,
    ):

        async def client(index: int) -> None:
            nonlocal finished_ns
            rng = random.Random(index)
            think_lo, think_hi = scenario.think
            burst = scenario.burst
            mono = time.monotonic_ns
            slot = Slot()
            current_slot.set(slot)  # this task's context: the tracer finds it here
            col = reqs.column
            r_start, r_got, r_xend, r_end = col("start"), col("got"), col("xend"), col("end")
            r_wait, r_resume, r_resolve = col("wait"), col("resume"), col("resolve")
            r_budget = col("budget")
            r_dial, r_tls, r_fail = col("dial"), col("tls"), col("failures")
            r_conn, r_addr = col("conn"), col("addr")
            while mono() < deadline_ns and not control.stop:
                if burst is not None:
                    period, active = burst
                    phase = ((mono() - t0_ns) / 1e9) % period
                    if phase >= active:
                        # Off between bursts: wait for the next one (a little
                        # jitter, so that clients do not start in lockstep).
                        pause = period - phase + rng.uniform(0.0, 0.002)
                        if mono() + pause * 1e9 >= deadline_ns:
                            break
                        await anyio.sleep(pause)
                        continue
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        slot.reset()
                        start = mono()
                        ip, conn_id = await request(slot)
                        end = mono()
                    got = slot.got_ns or slot.handed_ns or slot.dial_end_ns or start
                    xend = slot.xend_ns or slot.released_ns or end
                    if not ip:
                        ip, conn_id = slot.ip or "?", slot.conn_id
                except anyio.get_cancelled_exc_class():
                    raise
                except TimeoutError as exc:
                    errors.add(
                        TimeoutError(f"request timed out after {REQUEST_TIMEOUT:g} s")
                        if not str(exc)
                        else exc,
                        (mono() - t0_ns) / 1e9,
                    )
                    failed.append(mono() - t0_ns)
                    await anyio.sleep(0.001)
                    continue
                except Exception as exc:
                    now = mono()
                    errors.add(exc, (now - t0_ns) / 1e9)
                    failed.append(now - t0_ns)
                    # A failing server must not turn the client into a busy loop.
                    await anyio.sleep(0.001)
                    continue
                latency.append(end - start)
                acquire.append(got - start)
                done.append(end - t0_ns)
                r_start.append(start - t0_ns)
                r_got.append(got - t0_ns)
                r_xend.append(xend - t0_ns)
                r_end.append(end - t0_ns)
                wait_ns = slot.wait_ns
                r_wait.append(wait_ns)
                r_resume.append(max(0, slot.granted_ns - start - wait_ns) if slot.granted_ns else 0)
                r_budget.append(
                    max(0, slot.budget_ns - (slot.granted_ns or start)) if slot.budget_ns else 0
                )
                r_resolve.append(slot.resolve_ns)
                dial = slot.dial_end_ns - slot.dial_start_ns if slot.dial_end_ns else 0
                r_dial.append(max(0, dial))
                r_tls.append(slot.tls_ns)
                r_fail.append(slot.failures)
                r_conn.append(conn_id)
                r_addr.append(reqs.address_index(ip))
                if think_hi > 0:
                    pause = rng.uniform(think_lo, think_hi)
                    left = (deadline_ns - mono()) / 1e9
                    if left > 0:
                        await anyio.sleep(min(pause, left))
            finished_ns = max(finished_ns, time.monotonic_ns())

        def sample() -> None:
            began = time.monotonic_ns()
            stats = pool.stats()
            samples_t.append((time.monotonic_ns() - t0_ns) / 1e9)
            ep_stats = stats.endpoints.get(endpoint)
            n = len(samples_t)
            for ip in addresses:
                samples_addr.setdefault(ip, {"active": [], "idle": [], "pending": []})
            if ep_stats is not None:
                for ip in ep_stats.addresses:
                    samples_addr.setdefault(
                        ip,
                        {"active": [0] * (n - 1), "idle": [0] * (n - 1), "pending": [0] * (n - 1)},
                    )
            for ip, series in samples_addr.items():
                a = ep_stats.addresses.get(ip) if ep_stats is not None else None
                series["active"].append(a.active if a is not None else 0)
                series["idle"].append(a.idle if a is not None else 0)
                series["pending"].append(a.pending if a is not None else 0)
            samples_waiting.append(ep_stats.waiting if ep_stats is not None else 0)
            digest.drain(tracer)
            if progress is not None:
                elapsed = (time.monotonic_ns() - t0_ns) / 1e9
                progress(scenario.name, min(elapsed / duration, 1.0), len(latency), len(failed))
            sampler_runs.append((began - t0_ns, time.monotonic_ns() - began))

        async def sampler() -> None:
            while True:
                sample()
                await anyio.sleep(interval)

        async def act(action: Action) -> None:
            assert servers is not None
            await anyio.sleep(max(0.0, t0_ns / 1e9 + action.at * duration - time.monotonic()))
            if control.stop:
                return
            t_s = (time.monotonic_ns() - t0_ns) / 1e9
            try:
                if action.op == "down":
                    down.add(action.address)
                    await _call(servers.down, action.address)
                else:
                    await _call(servers.up, action.address)
                    down.discard(action.address)
            except ServerError as exc:
                errors.add_note("servers", f"could not {action.label}: {exc}", t_s)
                return
            markers.append(
                {"t_s": round((time.monotonic_ns() - t0_ns) / 1e9, 4), "label": action.label}
            )

        with anyio.CancelScope() as scope, gcw:
            control.scope = scope
            if control.stop:
                scope.cancel()
            try:
                with anyio.move_on_after(duration + GRACE) as cap:
                    async with anyio.create_task_group() as helpers:
                        helpers.start_soon(sampler)
                        helpers.start_soon(probe.run)
                        for action in scenario.actions:
                            helpers.start_soon(act, action)
                        async with anyio.create_task_group() as clients:
                            for i in range(concurrency):
                                clients.start_soon(client, i)
                        helpers.cancel_scope.cancel()
                if cap.cancelled_caught:
                    errors.add_note(
                        "stuck",
                        f"requests still running {GRACE:g} s after the end were cancelled",
                        duration + GRACE,
                    )
            finally:
                control.scope = None
                if down and servers is not None:
                    # Never leave an address down for the next scenario.
                    with anyio.CancelScope(shield=True):
                        for ip in sorted(down):
                            with contextlib.suppress(ServerError):
                                await _call(servers.up, ip)
        interrupted = scope.cancelled_caught or control.stop
        if not interrupted:
            sample()
            final_stats = pool.stats()
    end_ns = time.monotonic_ns()
    cpu_after = (cpu_snapshot(), cpu_snapshot(server_pid), machine_snapshot())
    gc.unfreeze()
    if interrupted:
        return None
    digest.drain(tracer)
    digest.finish()
    server_after: dict[str, Any] | None = None
    if server_before is not None and servers is not None:
        server_after = await _call(servers.status)

    elapsed = max((finished_ns or end_ns) - t0_ns, 1) / 1e9
    out = _result(
        scenario,
        endpoint=endpoint,
        addresses=sorted(samples_addr) or addresses,
        protocol=proto,
        config=config,
        concurrency=concurrency,
        duration=duration,
        elapsed=elapsed,
        latency=latency,
        acquire=acquire,
        done=done,
        failed=failed,
        errors=errors,
        markers=markers,
        interval=interval,
        bucket=bucket,
        samples_t=samples_t,
        samples_addr=samples_addr,
        samples_waiting=samples_waiting,
        digest=digest,
        tracer=tracer,
        final_stats=final_stats,
        server_before=server_before,
        server_after=server_after,
        reqs=reqs,
        probe=probe,
        gcw=gcw,
        sampler_runs=sampler_runs,
        cpu={
            "wall_s": round((end_ns - t0_ns) / 1e9, 4),
            "client": cpu_delta(cpu_before[0], cpu_after[0], (end_ns - t0_ns) / 1e9),
            "server": cpu_delta(cpu_before[1], cpu_after[1], (end_ns - t0_ns) / 1e9),
            "machine": _machine_delta(cpu_before[2], cpu_after[2]),
            "cpus": os.cpu_count(),
        },
        trace_path=trace_path,
        raw=raw,
    )
    if final_stats is not None and final_stats.budget is not None:
        out["budget"] = dataclasses.asdict(final_stats.budget)
    if raw is not None:
        raw["t0_ns"] = t0_ns
        raw["connect_ms"] = digest.connect_ms
    return out


def _machine_delta(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    total = after["total_s"] - before["total_s"]
    busy = after["busy_s"] - before["busy_s"]
    return {"busy_s": round(busy, 3), "total_s": round(total, 3)}


def _buckets(times_ns: Iterable[int], interval: float, count: int) -> list[int]:
    out = [0] * count
    width = interval * 1e9
    for t in times_ns:
        i = int(t / width)
        if 0 <= i < count:
            out[i] += 1
        elif i >= count and count:
            out[-1] += 1
    return out


def _server_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, kind: str
) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    server_kind = {"slow": "echo", "uneven": "http"}.get(kind, kind)
    out: dict[str, Any] = {"kind": server_kind, "accepted": {}, "requests": {}}
    for key in ("accepted", "requests"):
        for name, count in after[key].items():
            k, _, ip = name.partition(" ")
            if k == server_kind:
                delta = count - before[key].get(name, 0)
                if delta:
                    out[key][ip] = delta
    return out


def _result(
    scenario: Scenario,
    *,
    endpoint: conpool.Endpoint,
    addresses: list[str],
    protocol: Protocol,
    config: conpool.Config,
    concurrency: int,
    duration: float,
    elapsed: float,
    latency: array[int],
    acquire: array[int],
    done: array[int],
    failed: array[int],
    errors: _Errors,
    markers: list[dict[str, Any]],
    interval: float,
    bucket: float,
    samples_t: list[float],
    samples_addr: dict[str, dict[str, list[int]]],
    samples_waiting: list[int],
    digest: TraceDigest,
    tracer: conpool.Tracer,
    final_stats: conpool.PoolStats | None,
    server_before: dict[str, Any] | None,
    server_after: dict[str, Any] | None,
    reqs: Requests,
    probe: LoopProbe,
    gcw: GCWatch,
    sampler_runs: list[tuple[int, int]],
    cpu: dict[str, Any],
    trace_path: str | None,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    lat_ms = _ms(latency)
    parts = analysis.request_parts(reqs, probe)
    if raw is not None:
        raw["latency_ns"] = list(latency)
        raw["acquire_ns"] = list(acquire)
        raw["done_ns"] = list(done)
        raw["failed_ns"] = list(failed)
        raw["parts_ns"] = parts
        raw["addr"] = [reqs.addresses[a] for a in reqs.column("addr")]
    lag = analysis.lag_summary(probe, gcw, sampler_runs)
    waves = analysis.retirement_waves(digest.lifetimes)
    tail = analysis.tail(reqs, parts, probe, gcw, sampler_runs, waves, lag)
    trace_file = None
    if trace_path is not None:
        chrome.write_trace(
            trace_path,
            scenario.name,
            digest.keep or [],
            t0_ns=digest.t0_ns,
            probe=probe,
            gcw=gcw,
            sampler=sampler_runs,
            slow=tail["requests"],
        )
        trace_file = os.path.basename(trace_path)
    acq_ms = _ms(acquire)
    nbuckets = max(1, math.ceil(elapsed / bucket))
    created = sum(digest.created.values())
    handouts = sum(digest.handouts.values())
    ep_stats = final_stats.endpoints.get(endpoint) if final_stats is not None else None
    pool_stats = None
    if ep_stats is not None:
        pool_stats = {
            "created": ep_stats.created,
            "reused": ep_stats.reused,
            "closed": ep_stats.closed,
            "connect_failures": ep_stats.connect_failures,
            "addresses": {
                ip: {"created": a.created, "failures": a.failures, "ejected": a.ejected}
                for ip, a in sorted(ep_stats.addresses.items())
            },
        }
    failures = [
        {"address": ip, "detail": detail, "count": n}
        for (ip, detail), n in digest.failures.most_common()
    ]
    notes = list(scenario.notes)
    if scenario.group == "balance" and len(addresses) < 2:
        notes.append("the endpoint has a single address: the policy has nothing to choose from")
    if digest.dropped:
        notes.append(
            f"the tracer dropped {digest.dropped} events (ring buffer of {tracer.capacity})"
        )
    if pool_stats is not None and pool_stats["created"] != created:
        notes.append(
            f"pool.stats() counts {pool_stats['created']} connections created, the trace {created}"
        )
    ok = len(latency)
    return {
        "name": scenario.name,
        "title": scenario.title,
        "group": scenario.group,
        "description": scenario.description,
        "protocol": protocol.name,
        "protocol_detail": protocol.describe(),
        "endpoint": str(endpoint),
        "tls": endpoint.tls is not None,
        "addresses": addresses,
        "config": config_dict(config),
        "concurrency": concurrency,
        "think_s": list(scenario.think),
        "burst_s": list(scenario.burst) if scenario.burst is not None else None,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 4),
        "requests": {"ok": ok, "errors": len(failed), "total": ok + len(failed)},
        "throughput_rps": round(ok / elapsed, 2),
        "latency_ms": _rounded(percentiles(lat_ms)),
        "acquire_ms": _rounded(percentiles(acq_ms)),
        "connect_ms": _rounded(percentiles(digest.connect_ms)),
        "histogram": log_histogram({"latency": lat_ms, "acquire": acq_ms}),
        "timeseries": {
            "interval_s": interval,
            "bucket_interval_s": bucket,
            "t_s": [round(t, 4) for t in samples_t],
            "addresses": samples_addr,
            "waiting": samples_waiting,
            "bucket_s": [round((i + 1) * bucket, 4) for i in range(nbuckets)],
            "rps": [round(c / bucket, 1) for c in _buckets(done, bucket, nbuckets)],
            "errors_per_s": [round(c / bucket, 1) for c in _buckets(failed, bucket, nbuckets)],
        },
        "connections": {
            "created": created,
            "handouts": handouts,
            "reused": handouts - created,
            "closed": sum(digest.close_reasons.values()),
            "close_reasons": dict(digest.close_reasons.most_common()),
            "connect_failed": digest.kinds.get("connect.failed", 0),
            "connect_retries": digest.kinds.get("connect.retry", 0),
            "acquire_queued": digest.kinds.get("acquire.queued", 0),
            "acquire_timeouts": digest.kinds.get("acquire.timeout", 0),
            "per_address": {
                ip: {"created": digest.created.get(ip, 0), "handouts": digest.handouts.get(ip, 0)}
                for ip in (sorted(samples_addr) or addresses)
            },
        },
        "lifetimes": digest.lifetimes,
        "connect_failures": failures,
        "address_events": digest.address_events,
        "errors": errors.result(),
        "markers": markers,
        "trace": {
            "events": digest.events,
            "dropped": digest.dropped,
            "capacity": tracer.capacity,
            "kinds": dict(sorted(digest.kinds.items())),
        },
        "pool_stats": pool_stats,
        "server": _server_delta(server_before, server_after, scenario.port),
        "notes": notes,
        "expected_errors": scenario.expected_errors,
        "breakdown": analysis.breakdown(reqs, parts),
        "lag": lag,
        "tail": tail,
        "waves": waves,
        "balance_time": analysis.balance_over_time(reqs),
        "cpu": cpu,
        "timeline": chrome.timeline_window(
            digest.lifetimes, digest.waits, digest.connects, elapsed
        ),
        "trace_file": trace_file,
    }
