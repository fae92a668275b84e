"""The report's zoomable timeline of one scenario: inline SVG and a little inline script.

Connections are spans on one track per address (rows packed so that spans
in a row never overlap), each ending in a tick coloured by its close reason;
connect attempts sit on a thin row of their address; acquire waits have a
track of their own.  The script zooms (mouse wheel, or the + and - buttons)
and pans (drag) along the time axis and redraws the ticks; without it the
whole window still shows.  Nothing is loaded from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from .svg import REASON_COLORS, _f, _legend, fmt_ms, nice_ticks

__all__ = ["interactive_timeline"]

WIDTH = 1240.0
LEFT = 120.0
RIGHT = 36.0
ROW = 7.0
MAX_ROWS = 14  # rows per track; more overlapping spans share rows
CONNECT_COLOR = "#E69F00"
FAILED_COLOR = "#D55E00"
WAIT_COLOR = "#CC79A7"
CONN_COLOR = "#B8C4D6"  # a neutral grey-blue: the close ticks carry the colours

_SCRIPT = """
(function () {
  var svg = document.getElementById(%(id)s);
  if (!svg) { return; }
  var zoom = svg.querySelector('g.tl-zoom'), ticks = svg.querySelector('g.tl-ticks');
  var W = %(plot_w)s, T0 = %(t0)s, T1 = %(t1)s, BOTTOM = %(bottom)s;
  var k = 1, tx = 0, drag = null;
  function nice(span) {
    var raw = span / 6, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= raw) { return steps[i] * p; } }
    return 10 * p;
  }
  function fmt(ms) {
    if (Math.abs(ms) >= 1000) { return +(ms / 1000).toPrecision(4) + ' s'; }
    if (Math.abs(ms) >= 1 || ms === 0) { return +ms.toPrecision(4) + ' ms'; }
    return +(ms * 1000).toPrecision(3) + ' \\u00b5s';
  }
  function draw() {
    zoom.setAttribute('transform', 'translate(' + tx + ',0) scale(' + k + ',1)');
    var a = T0 + (-tx / k) / W * (T1 - T0), b = T0 + ((W - tx) / k) / W * (T1 - T0);
    var step = nice(b - a), out = [];
    for (var t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) {
      var u = ((t - T0) / (T1 - T0) * W) * k + tx;
      out.push('<line class="tickmark" x1="' + u + '" x2="' + u + '" y1="' + BOTTOM +
               '" y2="' + (BOTTOM + 5) + '"/><text class="tick" font-size="11" ' +
               'text-anchor="middle" x="' + u + '" y="' + (BOTTOM + 17) + '">' +
               fmt(t) + '</text>');
    }
    ticks.innerHTML = out.join('');
    svg.setAttribute('data-zoom', String(k));
  }
  function at(evt) {
    var box = svg.getBoundingClientRect(), vb = svg.viewBox.baseVal;
    return (evt.clientX - box.left) * vb.width / box.width - %(left)s;
  }
  function zoomAt(u, factor) {
    var k2 = Math.min(Math.max(k * factor, 1), 5000);
    tx = u - (u - tx) * (k2 / k);
    k = k2;
    tx = Math.min(0, Math.max(W * (1 - k), tx));
    draw();
  }
  svg.addEventListener('wheel', function (evt) {
    evt.preventDefault();
    zoomAt(at(evt), evt.deltaY < 0 ? 1.25 : 0.8);
  }, {passive: false});
  svg.addEventListener('mousedown', function (evt) { drag = {x: at(evt), tx: tx}; });
  window.addEventListener('mouseup', function () { drag = null; });
  svg.addEventListener('mousemove', function (evt) {
    if (!drag) { return; }
    tx = Math.min(0, Math.max(W * (1 - k), drag.tx + at(evt) - drag.x));
    draw();
  });
  var buttons = document.querySelectorAll('[data-timeline=' + %(id)s + ']');
  Array.prototype.forEach.call(buttons, function (btn) {
    btn.addEventListener('click', function () {
      var op = btn.getAttribute('data-op');
      if (op === 'in') { zoomAt(W / 2, 2); }
      else if (op === 'out') { zoomAt(W / 2, 0.5); }
      else { k = 1; tx = 0; draw(); }
    });
  });
  draw();
})();
"""


def _pack(spans: Sequence[tuple[float, float]]) -> list[int]:
    rows: list[float] = []
    out = []
    for start, end in spans:
        for r, busy in enumerate(rows):
            if busy <= start:
                rows[r] = end
                out.append(r)
                break
        else:
            if len(rows) < MAX_ROWS:
                rows.append(end)
                out.append(len(rows) - 1)
            else:
                # Every row busy: share the one that frees first.
                r = min(range(len(rows)), key=rows.__getitem__)
                rows[r] = max(rows[r], end)
                out.append(r)
    return out


def interactive_timeline(r: dict[str, Any], chart_id: str = "timeline") -> str:
    """The figure (buttons, SVG, script) for scenario ``r``'s timeline window."""
    tl = r["timeline"]
    w0, w1 = float(tl["window_s"][0]), float(tl["window_s"][1])
    w1 = max(w1, w0 + 1e-3)
    plot_w = WIDTH - LEFT - RIGHT

    def u(t: float) -> float:
        return (min(max(t, w0), w1) - w0) / (w1 - w0) * plot_w

    def lane(y: float, height: float, label: str) -> None:
        """A track's background and its label."""
        body.append(
            f'<rect class="lane" x="{_f(LEFT)}" y="{_f(y)}" width="{_f(plot_w)}" '
            f'height="{_f(height)}"/>'
        )
        labels.append(
            f'<text class="category" x="{_f(LEFT - 8)}" y="{_f(y + height / 2 + 4)}" '
            f'font-size="11" text-anchor="end">{escape(label)}</text>'
        )

    addresses = list(r["addresses"])
    for c in tl["connections"]:
        if c[1] not in addresses:
            addresses.append(c[1])
    reasons = sorted({c[4] for c in tl["connections"]})
    legend = [("acquire wait", WAIT_COLOR), ("connect", CONNECT_COLOR)]
    if any(c[3] == "failed" for c in tl["connects"]):
        legend.append(("failed connect", FAILED_COLOR))
    legend.append(("connection", CONN_COLOR))
    legend += [(f"closed: {x}", REASON_COLORS.get(x, "#777")) for x in reasons if x != "open"]
    top = 34.0
    body: list[str] = []
    zoomed: list[str] = []
    labels: list[str] = []
    y = top
    spans = 0
    for ip in addresses:
        conns = sorted(
            (c for c in tl["connections"] if c[1] == ip),
            key=lambda c: c[2],
        )
        rows = _pack([(c[2], c[3] if c[3] is not None else w1) for c in conns])
        nrows = max(rows, default=0) + 1
        height = nrows * ROW + ROW + 6
        lane(y, height, ip)
        for c, row in zip(conns, rows, strict=True):
            end = c[3] if c[3] is not None else w1
            x0, x1 = u(c[2]), u(end)
            cy = y + 3 + row * ROW
            tip = (
                f"connection #{c[0]} to {ip}: {c[2] * 1000:.2f}{chr(8211)}{end * 1000:.2f} ms"
                f", closed: {c[4]}"
            )
            zoomed.append(
                f'<rect class="span conn" x="{x0:.2f}" y="{cy:.1f}" width="{max(x1 - x0, 0.3):.2f}"'
                f' height="{ROW - 2:.0f}" fill="{CONN_COLOR}">'
                f"<title>{escape(tip)}</title></rect>"
            )
            spans += 1
            if c[3] is not None and c[3] <= w1:
                color = REASON_COLORS.get(c[4], "#777")
                zoomed.append(
                    f'<line class="close" x1="{x1:.2f}" x2="{x1:.2f}" y1="{cy - 1:.1f}" '
                    f'y2="{cy + ROW - 1:.1f}" stroke="{color}" stroke-width="2.5" '
                    f'vector-effect="non-scaling-stroke"><title>{escape(tip)}</title></line>'
                )
        cy = y + 3 + nrows * ROW
        for c in tl["connects"]:
            if c[0] != ip:
                continue
            x0, x1 = u(c[1]), u(c[2])
            color = CONNECT_COLOR if c[3] == "ok" else FAILED_COLOR
            tip = f"{'connect' if c[3] == 'ok' else 'failed connect'} to {ip}: " + fmt_ms(
                (c[2] - c[1]) * 1000
            )
            zoomed.append(
                f'<rect class="span connect" x="{x0:.2f}" y="{cy:.1f}" '
                f'width="{max(x1 - x0, 0.3):.2f}" height="{ROW - 2:.0f}" fill="{color}">'
                f"<title>{escape(tip)}</title></rect>"
            )
            spans += 1
        y += height + 4
    waits = sorted(tl["waits"])
    rows = _pack([(a, b) for a, b in waits])
    nrows = max(rows, default=0) + 1
    height = nrows * (ROW - 3) + 6
    lane(y, height, "acquire waits")
    for (a, b), row in zip(waits, rows, strict=True):
        x0, x1 = u(a), u(b)
        zoomed.append(
            f'<rect class="span wait" x="{x0:.2f}" y="{y + 3 + row * (ROW - 3):.1f}" '
            f'width="{max(x1 - x0, 0.3):.2f}" height="{ROW - 4:.0f}" fill="{WAIT_COLOR}">'
            f"<title>acquire wait {escape(fmt_ms((b - a) * 1000))}</title></rect>"
        )
        spans += 1
    y += height
    bottom = y + 4
    total_h = bottom + 44
    sid = f'"{chart_id}"'
    script = _SCRIPT % {
        "id": sid.replace('"', "'"),
        "plot_w": _f(plot_w),
        "t0": repr(w0 * 1000),
        "t1": repr(w1 * 1000),
        "bottom": _f(bottom),
        "left": _f(LEFT),
    }
    static_ticks = "".join(
        f'<line class="tickmark" x1="{u(t / 1000):.1f}" x2="{u(t / 1000):.1f}" '
        f'y1="{_f(bottom)}" y2="{_f(bottom + 5)}"/><text class="tick" font-size="11" '
        f'text-anchor="middle" x="{u(t / 1000):.1f}" y="{_f(bottom + 17)}">{_f(t)} ms</text>'
        for t in nice_ticks(w0 * 1000, w1 * 1000, 6)
        if w0 * 1000 <= t <= w1 * 1000
    )
    svg = (
        f'<svg class="timeline" id="{chart_id}" data-spans="{spans}" '
        f'viewBox="0 0 {_f(WIDTH)} {_f(total_h)}" width="{_f(WIDTH)}" height="{_f(total_h)}" '
        f'role="img" aria-labelledby="{chart_id}-t" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">Timeline of {escape(r["name"])}</title>'
        f'<defs><clipPath id="{chart_id}-clip"><rect x="0" y="0" width="{_f(plot_w)}" '
        f'height="{_f(total_h)}"/></clipPath></defs>'
        + _legend(legend, LEFT, 8, plot_w)
        + "".join(body)
        + "".join(labels)
        + f'<g transform="translate({_f(LEFT)},0)"><g clip-path="url(#{chart_id}-clip)">'
        f'<g class="tl-zoom">{"".join(zoomed)}</g></g>'
        f'<line class="axis" x1="0" x2="{_f(plot_w)}" y1="{_f(bottom)}" y2="{_f(bottom)}"/>'
        f'<g class="tl-ticks">{static_ticks}</g></g>'
        f'<text class="label" font-size="12" text-anchor="middle" x="{_f(LEFT + plot_w / 2)}"'
        f' y="{_f(bottom + 36)}">time since the scenario started (ms)</text>'
        "</svg>"
    )
    buttons = "".join(
        f'<button type="button" data-timeline="{chart_id}" data-op="{op}">{label}</button>'
        for op, label in (("in", "zoom in +"), ("out", "zoom out \u2212"), ("reset", "reset"))
    )
    return (
        f'<figure class="timeline-fig"><div class="tl-buttons">{buttons} '
        '<span class="sub">or scroll to zoom, drag to pan</span></div>'
        f'<div class="tl-scroll">{svg}</div>'
        f"<figcaption>Scenario {escape(r['name'])}, {w0 * 1000:g}{chr(8211)}"
        f"{w1 * 1000:.4g} ms after its start: {len(tl['connections']):,} connections, "
        f"{len(tl['connects']):,} connects and {len(tl['waits']):,} acquire waits. Each "
        "connection ends in a tick coloured by why it was closed.</figcaption>"
        f"<script>{script}</script></figure>"
    )
