"""OpenTelemetry metrics and spans from pool events (``pip install conpool[otel]``).

Register the exporter as a hook on every event::

    exporter = conpool.otel.OTelExporter()          # global providers
    pool.add_hook("*", exporter)

Metrics (instrument names follow OpenTelemetry's ``db.client.connection.*``
semantic conventions where one fits):

* ``conpool.connection.created`` / ``.reused`` / ``.closed`` (counters; closed
  carries ``conpool.close.reason``),
* ``conpool.connect.failures`` (counter),
* ``conpool.connect.duration`` and ``conpool.acquire.wait`` (histograms, seconds).

Spans, with their real start and end times: ``conpool.connect`` per attempt,
``conpool.tls_handshake``, ``conpool.resolve`` and ``conpool.acquire.wait``.
Every instrument and span carries ``server.address`` (the endpoint's host),
``server.port`` and, where known, ``network.peer.address`` (the IP dialled).
"""

from __future__ import annotations

import time
from typing import Any

from ._trace import Event

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("conpool.otel needs OpenTelemetry: pip install 'conpool[otel]'") from exc

__all__ = ["OTelExporter"]

# Event kinds that end a span, and the span's name.
_SPANS = {
    "connect.complete": "conpool.connect",
    "connect.failed": "conpool.connect",
    "tls.complete": "conpool.tls_handshake",
    "proxy.handshake.complete": "conpool.proxy_handshake",
    "proxy.handshake.failed": "conpool.proxy_handshake",
    "resolve.complete": "conpool.resolve",
    "acquire.granted": "conpool.acquire.wait",
}


class OTelExporter:
    """A pool hook that records OpenTelemetry metrics and spans.

    :param meter_provider: where metrics go; the global provider if None.
    :param tracer_provider: where spans go; the global provider if None.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("conpool")
        self._tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("conpool")
        self._created = meter.create_counter(
            "conpool.connection.created", unit="{connection}", description="Connections opened"
        )
        self._reused = meter.create_counter(
            "conpool.connection.reused", unit="{connection}", description="Connections reused"
        )
        self._closed = meter.create_counter(
            "conpool.connection.closed", unit="{connection}", description="Connections closed"
        )
        self._failures = meter.create_counter(
            "conpool.connect.failures", unit="{attempt}", description="Failed connect attempts"
        )
        self._connect = meter.create_histogram(
            "conpool.connect.duration", unit="s", description="Connect time (TCP and TLS)"
        )
        self._wait = meter.create_histogram(
            "conpool.acquire.wait", unit="s", description="Time waiting for a slot"
        )
        # Events carry monotonic time; OpenTelemetry wants wall-clock ns.
        self._offset = time.time_ns() - time.monotonic_ns()

    def __call__(self, event: Event) -> None:
        attrs = _attributes(event)
        kind = event.kind
        if kind == "connect.complete":
            self._created.add(1, attrs)
            if event.duration_ns is not None:
                self._connect.record(event.duration_ns / 1e9, attrs)
        elif kind == "conn.reuse":
            self._reused.add(1, attrs)
        elif kind == "conn.close":
            self._closed.add(1, {**attrs, "conpool.close.reason": event.detail})
        elif kind == "connect.failed":
            self._failures.add(1, attrs)
        elif kind == "acquire.granted" and event.duration_ns is not None:
            self._wait.record(event.duration_ns / 1e9, attrs)
        name = _SPANS.get(kind)
        if name is not None and event.duration_ns is not None:
            end = event.ts_ns + self._offset
            span = self._tracer.start_span(
                name, start_time=end - event.duration_ns, attributes=attrs
            )
            if kind.endswith(".failed"):
                span.set_status(Status(StatusCode.ERROR, event.detail))
            span.end(end_time=end)

    def __repr__(self) -> str:
        return "OTelExporter()"


def _attributes(event: Event) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if event.endpoint:
        host, _, port = event.endpoint.rpartition(":")
        attrs["server.address"] = host.strip("[]")
        if port.isdigit():
            attrs["server.port"] = int(port)
    if event.address:
        attrs["network.peer.address"] = event.address
    return attrs
