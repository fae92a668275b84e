"""Pool statistics in the Prometheus text exposition format (version 0.0.4).

Written by hand because the format is a few lines of text; the test suite
checks it with ``prometheus_client``'s own parser.  Serve the result from any
HTTP handler with ``Content-Type: text/plain; version=0.0.4``.
"""

from __future__ import annotations

import math
import re

from ._stats import HistogramStats, PoolStats

__all__ = ["prometheus_text"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []
        self.declared: set[str] = set()

    def declare(self, name: str, kind: str, help_text: str) -> str:
        full = f"{self.prefix}_{name}"
        if full not in self.declared:
            self.declared.add(full)
            self.lines.append(f"# HELP {full} {help_text}")
            self.lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {_number(value)}")

    def histogram(self, name: str, help_text: str, hist: HistogramStats, **labels: str) -> None:
        full = self.declare(name, "histogram", help_text)
        cumulative = hist.cumulative()
        for bound, count in zip((*hist.bounds, math.inf), cumulative, strict=True):
            self.sample(f"{full}_bucket", count, **labels, le=_number(bound))
        self.sample(f"{full}_sum", hist.sum, **labels)
        self.sample(f"{full}_count", hist.count, **labels)


def prometheus_text(stats: PoolStats, prefix: str = "conpool") -> str:
    """Render a :meth:`Pool.stats() <conpool.Pool.stats>` snapshot for Prometheus.

    Gauges for what is open now (per endpoint and per address), counters for
    what happened since the pool started, histograms for wait and connect
    times.  Labels: ``endpoint`` (``host:port``), ``tls`` (``"true"`` or
    ``"false"``), ``address``, ``state``.

    :param stats: the snapshot to render.
    :param prefix: the metric name prefix.
    :raises TypeError: ``stats`` is not a :class:`~conpool.PoolStats`.
    :raises ValueError: ``prefix`` is not a valid metric name prefix.
    """
    if not isinstance(stats, PoolStats):
        raise TypeError(f"stats must be a conpool.PoolStats, got {stats!r}")
    if not isinstance(prefix, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", prefix):
        raise ValueError(f"prefix must be a metric name ([a-zA-Z_][a-zA-Z0-9_]*), got {prefix!r}")
    w = _Writer(prefix)
    ends = sorted(stats.endpoints.items(), key=lambda item: (str(item[0]), item[0].tls is None))
    for endpoint, ep in ends:
        labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
        name = w.declare("connections", "gauge", "Connections now, by state.")
        for state, value in (("active", ep.active), ("idle", ep.idle), ("pending", ep.pending)):
            w.sample(name, value, **labels, state=state)
    for endpoint, ep in ends:
        labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
        w.sample(w.declare("waiting", "gauge", "Tasks waiting for a slot."), ep.waiting, **labels)
    for endpoint, ep in ends:
        labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
        w.sample(
            w.declare("floor", "gauge", "Connections the min_idle floor keeps now."),
            ep.floor,
            **labels,
        )
    counters = (
        ("created", "Connections established."),
        ("reused", "Hand-outs of an existing connection."),
        ("closed", "Connections closed, for any reason."),
        ("connect_failures", "Acquires that failed to connect after every retry."),
        ("refills", "Connections the min_idle floor opened in the background."),
        ("refill_failures", "Background dials of the min_idle floor that failed."),
    )
    for field, help_text in counters:
        name = w.declare(f"{field}_total", "counter", help_text)
        for endpoint, ep in ends:
            labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
            w.sample(name, getattr(ep, field), **labels)
    addr_gauge = w.declare("address_connections", "gauge", "Connections now, per address.")
    for endpoint, ep in ends:
        labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
        for ip, a in sorted(ep.addresses.items()):
            for state, value in (("active", a.active), ("idle", a.idle), ("pending", a.pending)):
                w.sample(addr_gauge, value, **labels, address=ip, state=state)
    for field, kind, help_text in (
        ("created", "counter", "Connections established, per address."),
        ("failures", "counter", "Failed connection attempts, per address."),
        ("ejected", "gauge", "1 while the address is ejected for failing."),
    ):
        name = w.declare(
            f"address_{field}_total" if kind == "counter" else f"address_{field}", kind, help_text
        )
        for endpoint, ep in ends:
            labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
            for ip, a in sorted(ep.addresses.items()):
                w.sample(name, int(getattr(a, field)), **labels, address=ip)
    # Every sample of a family must be contiguous: one family at a time.
    for field, help_text in (
        ("wait_time", "Time acquires waited for a slot."),
        ("connect_time", "Time successful connects took."),
    ):
        family = field.replace("_time", "_seconds")
        for endpoint, ep in ends:
            labels = {"endpoint": str(endpoint), "tls": "false" if endpoint.tls is None else "true"}
            w.histogram(family, help_text, getattr(ep, field), **labels)
    return "\n".join(w.lines) + "\n"


prometheus_text.__module__ = "conpool"
