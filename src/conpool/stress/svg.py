"""Chart primitives for the stress report: inline SVG, drawn here, no library.

Every chart is a ``<figure>`` holding one ``<svg class="chart">`` with a
``<title>``/``<desc>`` for screen readers, axes with ticks, an axis label with
its unit on both axes, and a legend.  Each drawn data mark carries
``class="mark"`` and ``data-count`` (how many data points it draws: 1 for a bar,
n for a line through n points), and the ``<svg>`` carries ``data-points``, the
number of points it was given, so a test in a browser can check that every
point was drawn.

The colours are the Okabe-Ito palette (Okabe & Ito, *Color Universal Design*,
2008), distinguishable with the common colour-vision deficiencies; lines
also differ by dash pattern where colour alone would carry the meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = [
    "ADDRESS_COLORS",
    "OKABE_ITO",
    "REASON_COLORS",
    "Bar",
    "Lane",
    "Series",
    "fmt_count",
    "fmt_ms",
    "fmt_rate",
    "fmt_s",
    "hbar_chart",
    "histogram_chart",
    "line_chart",
    "nice_ticks",
    "stacked_area_chart",
    "stacked_hbar_chart",
    "timeline_chart",
]

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "grey": "#999999",
}

ADDRESS_COLORS = (
    OKABE_ITO["blue"],
    OKABE_ITO["orange"],
    OKABE_ITO["green"],
    OKABE_ITO["purple"],
    OKABE_ITO["sky"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["yellow"],
    OKABE_ITO["black"],
)

#: Connection close reasons (the ``detail`` of ``conn.close`` events).
REASON_COLORS = {
    "uses": OKABE_ITO["blue"],
    "idle": OKABE_ITO["sky"],
    "lifetime": OKABE_ITO["green"],
    "stale": OKABE_ITO["orange"],
    "error": OKABE_ITO["vermillion"],
    "evicted": OKABE_ITO["purple"],
    "drained": OKABE_ITO["yellow"],
    "health": OKABE_ITO["black"],
    "pool-closed": OKABE_ITO["grey"],
    "open": "#FFFFFF",
}

WIDTH = 640
HEIGHT = 290
MARGIN_LEFT = 70
MARGIN_RIGHT = 18
MARGIN_BOTTOM = 46
FONT = 11
CHAR_W = 6.3  # average advance of an 11 px sans-serif character, for layout


# ----------------------------------------------------------------------------
# Formatting


def _trim(text: str) -> str:
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _sig(value: float, digits: int = 3) -> str:
    """``value`` with about ``digits`` significant digits, no trailing zeros."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return _trim(f"{value:.{decimals}f}")


def fmt_ms(value: float | None) -> str:
    """A duration given in milliseconds: ``850 µs``, ``1.2 ms``, ``3.4 s``."""
    if value is None:
        return "\u2013"  # an en dash: no value
    if value == 0:
        return "0"
    if abs(value) < 1:
        return f"{_sig(value * 1000)} µs"
    if abs(value) < 1000:
        return f"{_sig(value)} ms"
    return f"{_sig(value / 1000)} s"


def fmt_s(value: float) -> str:
    """Seconds on a time axis."""
    return f"{_sig(value)} s"


def fmt_count(value: float) -> str:
    """A count: ``950``, ``12k``, ``1.2M``."""
    if abs(value) >= 1e6:
        return f"{_sig(value / 1e6, 2)}M"
    if abs(value) >= 10_000:
        return f"{_sig(value / 1e3, 3)}k"
    if value == int(value) or abs(value) >= 100:
        return f"{round(value):,}"
    return _sig(value, 3)


def fmt_rate(value: float) -> str:
    return f"{fmt_count(round(value))}/s"


# ----------------------------------------------------------------------------
# Scales


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (1, 2, 2.5 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = power
    for mult in (1, 2, 2.5, 5, 10):
        step = mult * power
        if step >= raw:
            break
    start = math.floor(lo / step + 1e-9) * step
    ticks: list[float] = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


class Linear:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        if d1 == d0:
            d1 = d0 + 1.0
        self.d0, self.d1, self.r0, self.r1 = d0, d1, r0, r1

    def __call__(self, v: float) -> float:
        return self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)


class Log:
    def __init__(self, d0: float, d1: float, r0: float, r1: float) -> None:
        d0 = max(d0, 1e-12)
        d1 = max(d1, d0 * 10)
        self.l0, self.l1, self.r0, self.r1 = math.log10(d0), math.log10(d1), r0, r1

    def __call__(self, v: float) -> float:
        lv = math.log10(max(v, 1e-12))
        return self.r0 + (lv - self.l0) / (self.l1 - self.l0) * (self.r1 - self.r0)


def log_ticks(lo: float, hi: float, pixels: float = 560.0) -> list[float]:
    """Decades, with 2 and 5 in between when there is room for them
    (about 60 px per label)."""
    k0 = math.floor(math.log10(max(lo, 1e-12)))
    k1 = math.ceil(math.log10(max(hi, lo * 10)))
    decades = max(k1 - k0, 1)
    mults: tuple[int, ...] = (1,)
    if pixels / (decades * 3) >= 60:
        mults = (1, 2, 5)
    elif pixels / (decades * 2) >= 60:
        mults = (1, 3)
    ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mults]
    return [t for t in ticks if lo * 0.999 <= t <= hi * 1.001] or [10.0**k0]


# ----------------------------------------------------------------------------
# Pieces


def _f(v: float) -> str:
    return _trim(f"{v:.1f}")


@dataclass
class _Frame:
    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def _text(
    x: float,
    y: float,
    text: str,
    *,
    anchor: str = "start",
    size: int = FONT,
    cls: str = "",
    rotate: bool = False,
    weight: str = "",
) -> str:
    attrs = f'x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}"'
    if cls:
        attrs += f' class="{cls}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    if rotate:
        attrs += f' transform="rotate(-90 {_f(x)} {_f(y)})"'
    return f"<text {attrs}>{escape(text)}</text>"


def _legend_height(items: Sequence[tuple[str, str]], width: float) -> float:
    rows = 1
    x = 0.0
    for name, _color in items:
        w = 22 + len(name) * CHAR_W + 16
        if x + w > width and x > 0:
            rows += 1
            x = 0.0
        x += w
    return rows * 16.0 if items else 0.0


def _legend(
    items: Sequence[tuple[str, str]],
    left: float,
    top: float,
    width: float,
    *,
    style: str = "rect",
    dashes: Sequence[str | None] = (),
    outlined: Sequence[bool] = (),
) -> str:
    """A wrapping row of swatches and names."""
    out = ['<g class="legend">']
    x, y = left, top
    for i, (name, color) in enumerate(items):
        w = 22 + len(name) * CHAR_W + 16
        if x + w > left + width and x > left:
            x = left
            y += 16
        if style == "line":
            dash = dashes[i] if i < len(dashes) else None
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{_f(x)}" y1="{_f(y + 6)}" x2="{_f(x + 16)}" y2="{_f(y + 6)}" '
                f'stroke="{color}" stroke-width="2.5"{dash_attr}/>'
            )
        elif i < len(outlined) and outlined[i]:
            out.append(
                f'<rect x="{_f(x + 1)}" y="{_f(y + 1)}" width="12" height="9" fill="none" '
                f'stroke="{color}" stroke-width="2.2" stroke-dasharray="5 2"/>'
            )
        else:
            out.append(
                f'<rect x="{_f(x)}" y="{_f(y)}" width="14" height="11" fill="{color}" '
                f'stroke="#333" stroke-width="0.5"/>'
            )
        out.append(_text(x + 20, y + 10, name))
        x += w
    out.append("</g>")
    return "".join(out)


def _axes(
    frame: _Frame,
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    x_label: str,
    y_label: str,
) -> str:
    """Grid lines, tick labels and axis titles; ticks are (pixel, text)."""
    out = ['<g class="axes">']
    for py, label in y_ticks:
        out.append(
            f'<line class="grid" x1="{_f(frame.left)}" x2="{_f(frame.right)}" '
            f'y1="{_f(py)}" y2="{_f(py)}"/>'
        )
        out.append(_text(frame.left - 6, py + 4, label, anchor="end", cls="tick"))
    out.extend(_x_axis(frame, x_ticks))
    out.append(
        f'<line class="axis" x1="{_f(frame.left)}" x2="{_f(frame.left)}" '
        f'y1="{_f(frame.top)}" y2="{_f(frame.bottom)}"/>'
    )
    out.extend(_axis_labels(frame, x_label, y_label, y_at=16))
    out.append("</g>")
    return "".join(out)


def _x_axis(frame: _Frame, x_ticks: Sequence[tuple[float, str]]) -> list[str]:
    """The x axis along the frame's bottom, with a tick mark and label per
    ``(pixel, text)``."""
    out = []
    for px, label in x_ticks:
        out.append(
            f'<line class="tickmark" x1="{_f(px)}" x2="{_f(px)}" '
            f'y1="{_f(frame.bottom)}" y2="{_f(frame.bottom + 5)}"/>'
        )
        out.append(_text(px, frame.bottom + 17, label, anchor="middle", cls="tick"))
    out.append(
        f'<line class="axis" x1="{_f(frame.left)}" x2="{_f(frame.right)}" '
        f'y1="{_f(frame.bottom)}" y2="{_f(frame.bottom)}"/>'
    )
    return out


def _bar_axes(
    frame: _Frame, ticks: Sequence[tuple[float, str]], x_label: str, y_label: str
) -> list[str]:
    """The axes of a horizontal bar chart: a vertical grid line per x tick
    ``(px, label)``, the x axis and the labels."""
    out = ['<g class="axes">']
    for px, label in ticks:
        out.append(
            f'<line class="grid" x1="{_f(px)}" x2="{_f(px)}" y1="{_f(frame.top)}" '
            f'y2="{_f(frame.bottom)}"/>'
        )
        out.append(_text(px, frame.bottom + 17, label, anchor="middle", cls="tick"))
    out.append(
        f'<line class="axis" x1="{_f(frame.left)}" x2="{_f(frame.right)}" '
        f'y1="{_f(frame.bottom)}" y2="{_f(frame.bottom)}"/>'
    )
    out.extend(_axis_labels(frame, x_label, y_label, y_at=14))
    out.append("</g>")
    return out


def _axis_labels(frame: _Frame, x_label: str, y_label: str, *, y_at: float) -> list[str]:
    """The x label centred under the plot, the y label rotated at ``y_at``."""
    middle_x = (frame.left + frame.right) / 2
    middle_y = (frame.top + frame.bottom) / 2
    return [
        _text(middle_x, frame.bottom + 36, x_label, anchor="middle", size=12, cls="label"),
        _text(y_at, middle_y, y_label, anchor="middle", size=12, cls="label", rotate=True),
    ]


#: Room above a plot for the markers' labels (two staggered rows), so that
#: they never sit on the data.
MARKER_STRIP = 28.0


def _markers(
    frame: _Frame, x: Callable[[float], float], markers: Sequence[tuple[float, str]]
) -> str:
    out = []
    for i, (mx, label) in enumerate(markers):
        px = x(mx)
        if not frame.left <= px <= frame.right:
            continue
        row_y = frame.top - 4 - 13 * ((len(markers) - 1 - i) % 2)
        out.append(
            f'<line class="marker" x1="{_f(px)}" x2="{_f(px)}" y1="{_f(row_y + 3)}" '
            f'y2="{_f(frame.bottom)}"/>'
        )
        anchor = "start" if px < frame.left + frame.width * 0.7 else "end"
        dx = 4 if anchor == "start" else -4
        out.append(_text(px + dx, row_y, label, anchor=anchor, cls="marker-label"))
    return "".join(out)


def _svg(
    chart_id: str,
    title: str,
    desc: str,
    height: float,
    body: Sequence[str],
    points: int,
    kind: str,
    width: float,
) -> str:
    h = _f(height)
    return (
        f'<svg class="chart" id="{chart_id}" data-kind="{kind}" data-points="{points}" '
        f'viewBox="0 0 {_f(width)} {h}" width="{_f(width)}" height="{h}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>' + "".join(body) + "</svg>"
    )


def _figure(svg: str, title: str, caption: str) -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart-fig"><h4>{escape(title)}</h4>{svg}{cap}</figure>'


def _top(legend_items: Sequence[tuple[str, str]], width: float) -> tuple[float, float]:
    """Where the legend goes and where the plot starts below it."""
    lh = _legend_height(legend_items, width - MARGIN_LEFT - MARGIN_RIGHT)
    return 8.0, 8.0 + lh + 10.0


# ----------------------------------------------------------------------------
# Charts


@dataclass
class Series:
    """A named sequence of (x, y) points."""

    name: str
    color: str
    xs: Sequence[float]
    ys: Sequence[float]
    dash: str | None = None


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str] = fmt_s,
    y_fmt: Callable[[float], str] = fmt_count,
    x_domain: tuple[float, float] | None = None,
    markers: Sequence[tuple[float, str]] = (),
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """Lines through each series' points, on linear axes starting at y = 0."""
    legend = [(s.name, s.color) for s in series]
    legend_top, top = _top(legend, width)
    top += MARKER_STRIP if markers else 0.0
    frame = _Frame(MARGIN_LEFT, top, width - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM + top - 40)
    height = frame.bottom + MARGIN_BOTTOM
    all_x = [x for s in series for x in s.xs]
    all_y = [y for s in series for y in s.ys]
    x0, x1 = x_domain if x_domain is not None else (min(all_x, default=0), max(all_x, default=1))
    y_ticks_v = nice_ticks(0.0, max(all_y, default=1.0) or 1.0)
    x_ticks_v = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
    x = Linear(x0, x1, frame.left, frame.right)
    y = Linear(0.0, y_ticks_v[-1], frame.bottom, frame.top)
    body = [
        _legend(
            legend,
            frame.left,
            legend_top,
            frame.width,
            style="line",
            dashes=[s.dash for s in series],
        ),
        _axes(
            frame,
            [(x(t), x_fmt(t)) for t in x_ticks_v],
            [(y(t), y_fmt(t)) for t in y_ticks_v],
            x_label,
            y_label,
        ),
        _markers(frame, x, markers),
    ]
    points = 0
    for s in series:
        n = min(len(s.xs), len(s.ys))
        points += n
        if n == 0:
            continue
        if n == 1:
            body.append(
                f'<circle class="mark" data-count="1" cx="{_f(x(s.xs[0]))}" '
                f'cy="{_f(y(s.ys[0]))}" r="3" fill="{s.color}"/>'
            )
        else:
            body.append(_polyline(s, n, x, y, ' stroke-linejoin="round"'))
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "line", width), title, caption
    )


def _polyline(
    s: Series, n: int, x: Callable[[float], float], y: Callable[[float], float], style: str = ""
) -> str:
    """The first ``n`` points of ``s`` as a line (``style``: more attributes)."""
    coords = " ".join(f"{_f(x(s.xs[i]))},{_f(y(s.ys[i]))}" for i in range(n))
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    return (
        f'<polyline class="mark" data-count="{n}" points="{coords}" fill="none" '
        f'stroke="{s.color}" stroke-width="2"{style}{dash}>'
        f"<title>{escape(s.name)}</title></polyline>"
    )


def stacked_area_chart(
    chart_id: str,
    title: str,
    xs: Sequence[float],
    layers: Sequence[tuple[str, str, Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str] = fmt_s,
    y_fmt: Callable[[float], str] = fmt_count,
    x_domain: tuple[float, float] | None = None,
    overlay: Series | None = None,
    markers: Sequence[tuple[float, str]] = (),
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """Layers (name, colour, values at ``xs``) stacked bottom to top, with an
    optional line drawn over them."""
    legend = [(name, color) for name, color, _ in layers]
    if overlay is not None:
        legend.append((overlay.name, overlay.color))
    legend_top, top = _top(legend, width)
    top += MARKER_STRIP if markers else 0.0
    frame = _Frame(MARGIN_LEFT, top, width - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM + top - 40)
    height = frame.bottom + MARGIN_BOTTOM
    n = len(xs)
    totals = [sum(layer[2][i] for layer in layers) for i in range(n)]
    peak = max(totals + (list(overlay.ys) if overlay is not None else []), default=1.0)
    x0, x1 = x_domain if x_domain is not None else (min(xs, default=0), max(xs, default=1))
    y_ticks_v = nice_ticks(0.0, peak or 1.0)
    x_ticks_v = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
    x = Linear(x0, x1, frame.left, frame.right)
    y = Linear(0.0, y_ticks_v[-1], frame.bottom, frame.top)
    body = [
        _legend(legend, frame.left, legend_top, frame.width),
        _axes(
            frame,
            [(x(t), x_fmt(t)) for t in x_ticks_v],
            [(y(t), y_fmt(t)) for t in y_ticks_v],
            x_label,
            y_label,
        ),
    ]
    base = [0.0] * n
    points = 0
    for name, color, values in layers:
        tops = [base[i] + values[i] for i in range(n)]
        upper = [f"{_f(x(xs[i]))},{_f(y(tops[i]))}" for i in range(n)]
        lower = [f"{_f(x(xs[i]))},{_f(y(base[i]))}" for i in reversed(range(n))]
        points += n
        if n:
            body.append(
                f'<path class="mark" data-count="{n}" d="M{" L".join(upper + lower)} Z" '
                f'fill="{color}" fill-opacity="0.85" stroke="{color}" stroke-width="1">'
                f"<title>{escape(name)}</title></path>"
            )
        base = tops
    if overlay is not None and overlay.xs:
        m = min(len(overlay.xs), len(overlay.ys))
        points += m
        body.append(_polyline(overlay, m, x, y))
    body.append(_markers(frame, x, markers))
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "area", width), title, caption
    )


def histogram_chart(
    chart_id: str,
    title: str,
    edges: Sequence[float],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str] = fmt_ms,
    vlines: Sequence[tuple[float, str]] = (),
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """Counts per bin on a logarithmic x axis: the first series a translucent filled
    step outline, the others dashed outlines only (no fill to mix with)."""
    legend = [(name, color) for name, color, _ in series]
    legend_top, top = _top(legend, width)
    frame = _Frame(MARGIN_LEFT, top, width - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM + top - 40)
    height = frame.bottom + MARGIN_BOTTOM
    lo, hi = (edges[0], edges[-1]) if len(edges) >= 2 else (0.001, 1.0)
    x = Log(lo, hi, frame.left, frame.right)
    peak = max((c for _, _, counts in series for c in counts), default=1)
    y_ticks_v = nice_ticks(0.0, peak or 1)
    y = Linear(0.0, y_ticks_v[-1], frame.bottom, frame.top)
    body = [
        _legend(
            legend,
            frame.left,
            legend_top,
            frame.width,
            outlined=[i > 0 for i in range(len(legend))],
        ),
        _axes(
            frame,
            [(x(t), x_fmt(t)) for t in log_ticks(lo, hi, frame.width)],
            [(y(t), fmt_count(t)) for t in y_ticks_v],
            x_label,
            y_label,
        ),
    ]
    points = 0
    for si, (name, color, counts) in enumerate(series):
        nb = min(len(counts), len(edges) - 1)
        points += nb
        if nb == 0:
            continue
        # The first series filled, the others as outlines only: overlapping
        # fills would mix into a colour that belongs to neither.
        paint = (
            f'fill="{color}" fill-opacity="0.30" stroke="{color}" stroke-width="1.5"'
            if si == 0
            else f'fill="none" stroke="{color}" stroke-width="2.2" stroke-dasharray="5 2"'
        )
        d = [f"M{_f(x(edges[0]))},{_f(frame.bottom)}"]
        for i in range(nb):
            yy = _f(y(counts[i]))
            d.append(f"L{_f(x(edges[i]))},{yy} L{_f(x(edges[i + 1]))},{yy}")
        d.append(f"L{_f(x(edges[nb]))},{_f(frame.bottom)} Z")
        body.append(
            f'<path class="mark" data-count="{nb}" d="{" ".join(d)}" {paint}>'
            f"<title>{escape(name)}</title></path>"
        )
    for i, (v, label) in enumerate(vlines):
        if lo <= v <= hi:
            px = x(v)
            ly = frame.top + 12 * (i % 4) + 9
            # Labels near the right edge read leftwards so they stay inside the chart.
            right = px > frame.left + frame.width * 0.75
            body.append(
                f'<line class="pline" x1="{_f(px)}" x2="{_f(px)}" y1="{_f(ly + 1)}" '
                f'y2="{_f(frame.bottom)}"/>'
            )
            body.append(
                _text(
                    px - 3 if right else px + 3,
                    ly,
                    label,
                    anchor="end" if right else "start",
                    cls="pline-label",
                )
            )
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "histogram", width),
        title,
        caption,
    )


def hbar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str] = fmt_count,
    log: bool = False,
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """Horizontal bars, one group per category, one bar per series.

    ``None`` values draw no bar (and count as no point).
    """
    legend = [(name, color) for name, color, _ in series]
    legend_top, top = _top(legend, width)
    label_w = min(240.0, max((len(c) for c in categories), default=4) * CHAR_W + 36)
    bar_h = 11.0 if len(series) > 1 else 16.0
    group_h = bar_h * len(series) + 8
    frame = _Frame(label_w, top, width - MARGIN_RIGHT - 46, top + group_h * len(categories) + 4)
    height = frame.bottom + MARGIN_BOTTOM
    values = [v for _, _, vs in series for v in vs if v is not None and v > 0]
    peak = max(values, default=1.0)
    body = [_legend(legend, MARGIN_LEFT, legend_top, width - MARGIN_LEFT - MARGIN_RIGHT)]
    scale: Callable[[float], float]
    if log:
        lo = 10 ** math.floor(math.log10(min(values, default=1.0)))
        hi = 10 ** math.ceil(math.log10(peak))
        scale = Log(lo, hi, frame.left, frame.right)
        ticks = [(scale(t), x_fmt(t)) for t in log_ticks(lo, hi, frame.width)]
        origin = frame.left
    else:
        tv = nice_ticks(0.0, peak)
        scale = Linear(0.0, tv[-1], frame.left, frame.right)
        ticks = [(scale(t), x_fmt(t)) for t in tv]
        origin = scale(0.0)
    body.extend(_bar_axes(frame, ticks, x_label, y_label))
    points = 0
    for ci, category in enumerate(categories):
        gy = frame.top + 4 + ci * group_h
        body.append(_text(frame.left - 8, gy + group_h / 2, category, anchor="end", cls="category"))
        for si, (name, color, vs) in enumerate(series):
            v = vs[ci] if ci < len(vs) else None
            if v is None:
                continue
            points += 1
            by = gy + si * bar_h
            px = scale(v) if (not log or v > 0) else origin
            w = max(px - origin, 1.0)
            body.append(
                f'<rect class="mark" data-count="1" x="{_f(origin)}" y="{_f(by)}" '
                f'width="{_f(w)}" height="{_f(bar_h - 2)}" fill="{color}">'
                f"<title>{escape(category)}, {escape(name)}: {escape(x_fmt(v))}</title></rect>"
            )
            body.append(_text(origin + w + 4, by + bar_h - 3.5, x_fmt(v), size=10, cls="value"))
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "bars", width), title, caption
    )


@dataclass
class Bar:
    """One connection on a timeline: from ``start`` to ``end`` (None: still open)."""

    start: float
    end: float | None
    reason: str
    tooltip: str


@dataclass
class Lane:
    label: str
    bars: list[Bar] = field(default_factory=list)


def _pack(bars: Sequence[Bar], end: float) -> list[int]:
    """Row of each bar so that bars in a row never overlap (first fit by start)."""
    rows_end: list[float] = []
    out = []
    for bar in bars:
        stop = bar.end if bar.end is not None else end
        for r, row_end in enumerate(rows_end):
            if row_end <= bar.start:
                rows_end[r] = stop
                out.append(r)
                break
        else:
            rows_end.append(stop)
            out.append(len(rows_end) - 1)
    return out


def timeline_chart(
    chart_id: str,
    title: str,
    lanes: Sequence[Lane],
    *,
    x_domain: tuple[float, float],
    colors: dict[str, str],
    x_label: str = "time since start (s)",
    y_label: str = "address",
    markers: Sequence[tuple[float, str]] = (),
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """Connection lifetimes as bars on one lane per address, coloured by close reason."""
    used = sorted(
        {b.reason for lane in lanes for b in lane.bars},
        key=lambda r: list(colors).index(r) if r in colors else 99,
    )
    legend = [
        (f"closed: {r}" if r != "open" else "still open", colors.get(r, "#777")) for r in used
    ]
    legend_top, top = _top(legend, width)
    top += MARKER_STRIP if markers else 0.0
    label_w = 96.0
    frame_left = label_w
    frame_right = width - MARGIN_RIGHT
    x0, x1 = x_domain
    x = Linear(x0, x1, frame_left, frame_right)
    packed = [(_pack(lane.bars, x1), lane) for lane in lanes]
    lane_heights = []
    for rows, _lane in packed:
        nrows = max(rows, default=0) + 1
        lane_heights.append(
            AGGREGATE_HEIGHT if nrows > MAX_LANE_ROWS else min(max(24.0, nrows * 6.0), 96.0)
        )
    body = [_legend(legend, MARGIN_LEFT, legend_top, width - MARGIN_LEFT - MARGIN_RIGHT)]
    y = top
    points = 0
    marks: list[str] = []
    for (rows, lane), lh in zip(packed, lane_heights, strict=True):
        nrows = max(rows, default=0) + 1
        row_h = lh / nrows
        body.append(
            f'<rect class="lane" x="{_f(frame_left)}" y="{_f(y)}" '
            f'width="{_f(frame_right - frame_left)}" height="{_f(lh)}"/>'
        )
        body.append(_text(frame_left - 8, y + lh / 2 + 4, lane.label, anchor="end", cls="category"))
        if nrows > MAX_LANE_ROWS:
            # Too many connections to draw one by one: how many were open,
            # as a step area, and a tick per close, coloured by its reason.
            points += len(lane.bars)
            marks.append(_open_count_path(lane, x, x0, x1, y, lh))
            marks.append(_close_ticks(lane, x, x0, x1, y, lh, colors))
            y += lh + 6
            continue
        for bar, row in zip(lane.bars, rows, strict=True):
            points += 1
            stop = bar.end if bar.end is not None else x1
            bx = x(max(bar.start, x0))
            bw = max(x(min(stop, x1)) - bx, 1.0)
            by = y + row * row_h + (0.15 * row_h if row_h > 3 else 0)
            bh = max(row_h * (0.7 if row_h > 3 else 1.0), 0.8)
            marks.append(
                f'<rect class="mark" data-count="1" x="{_f(bx)}" y="{by:.2f}" width="{_f(bw)}" '
                f'height="{bh:.2f}" fill="{colors.get(bar.reason, "#777")}" stroke="#333" '
                f'stroke-width="{0.4 if bh > 2 else 0}">'
                f"<title>{escape(bar.tooltip)}</title></rect>"
            )
        y += lh + 6
    frame = _Frame(frame_left, top, frame_right, y - 6)
    body.extend(marks)
    ticks = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
    body.append(_axes_x_only(frame, [(x(t), fmt_s(t)) for t in ticks], x_label))
    body.append(
        _text(
            14,
            (frame.top + frame.bottom) / 2,
            y_label,
            anchor="middle",
            size=12,
            cls="label",
            rotate=True,
        )
    )
    body.append(_markers(frame, x, markers))
    height = frame.bottom + MARGIN_BOTTOM
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "timeline", width),
        title,
        caption,
    )


#: A lane with more rows of overlapping connections than this is drawn aggregated.
MAX_LANE_ROWS = 12
AGGREGATE_HEIGHT = 60.0


def _open_count_path(
    lane: Lane, x: Callable[[float], float], x0: float, x1: float, top: float, height: float
) -> str:
    """A step area: how many of the lane's connections were open at each moment."""
    changes: list[tuple[float, int]] = []
    for bar in lane.bars:
        changes.append((max(bar.start, x0), 1))
        changes.append((min(bar.end if bar.end is not None else x1, x1), -1))
    changes.sort()
    peak = 0
    level = 0
    for _t, step in changes:
        level += step
        peak = max(peak, level)
    scale = (height - 14) / max(peak, 1)
    bottom = top + height
    d = [f"M{_f(x(x0))},{_f(bottom)}"]
    level = 0
    for t, delta in changes:
        px = _f(x(t))
        d.append(f"L{px},{_f(bottom - level * scale)}")
        level += delta
        d.append(f"L{px},{_f(bottom - level * scale)}")
    d.append(f"L{_f(x(x1))},{_f(bottom)} Z")
    return (
        f'<path class="mark" data-count="{len(lane.bars)}" d="{" ".join(d)}" '
        f'fill="#7a9cc6" fill-opacity="0.55" stroke="#2f4b73" stroke-width="1">'
        f"<title>{escape(lane.label)}: {len(lane.bars):,} connections, at most {peak} "
        "open at once (too many to draw one by one)</title></path>"
        + _text(x(x0) + 4, top + 11, f"open connections, peak {peak}", size=10, cls="value")
    )


def _close_ticks(
    lane: Lane,
    x: Callable[[float], float],
    x0: float,
    x1: float,
    top: float,
    height: float,
    colors: dict[str, str],
) -> str:
    """A short tick at the bottom of the lane for every close, one path per reason."""
    by_reason: dict[str, list[str]] = {}
    for bar in lane.bars:
        if bar.end is None or not x0 <= bar.end <= x1 or bar.reason == "open":
            continue
        px = _f(x(bar.end))
        by_reason.setdefault(bar.reason, []).append(
            f"M{px},{_f(top + height)} L{px},{_f(top + height - 8)}"
        )
    return "".join(
        f'<path class="close-ticks" d="{" ".join(ds)}" stroke="{colors.get(r, "#777")}" '
        f'stroke-width="1.2"><title>{len(ds):,} closed: {escape(r)}</title></path>'
        for r, ds in by_reason.items()
    )


def _axes_x_only(frame: _Frame, x_ticks: Sequence[tuple[float, str]], x_label: str) -> str:
    out = ['<g class="axes">']
    out.extend(_x_axis(frame, x_ticks))
    out.append(
        _text(
            (frame.left + frame.right) / 2,
            frame.bottom + 36,
            x_label,
            anchor="middle",
            size=12,
            cls="label",
        )
    )
    out.append("</g>")
    return "".join(out)


def stacked_hbar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    parts: Sequence[tuple[str, str, Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str] = fmt_ms,
    totals: Sequence[float] | None = None,
    caption: str = "",
    desc: str = "",
    width: float = WIDTH,
) -> str:
    """One horizontal bar per category, cut into ``parts`` (name, colour,
    value per category) laid end to end; the total is written after the bar.

    Zero parts draw nothing (and count as no point).  Adjacent segments are
    separated by a thin white outline so that similar colours stay apart.
    """
    legend = [(name, color) for name, color, _ in parts]
    legend_top, top = _top(legend, width)
    label_w = min(240.0, max((len(c) for c in categories), default=4) * CHAR_W + 36)
    bar_h = 18.0
    group_h = bar_h + 8
    frame = _Frame(label_w, top, width - MARGIN_RIGHT - 60, top + group_h * len(categories) + 4)
    height = frame.bottom + MARGIN_BOTTOM
    sums = [sum(vs[i] for _, _, vs in parts) for i in range(len(categories))]
    peak = max(sums + list(totals or []), default=1.0) or 1.0
    tv = nice_ticks(0.0, peak)
    scale = Linear(0.0, tv[-1], frame.left, frame.right)
    body = [_legend(legend, MARGIN_LEFT, legend_top, width - MARGIN_LEFT - MARGIN_RIGHT)]
    body.extend(_bar_axes(frame, [(scale(t), x_fmt(t)) for t in tv], x_label, y_label))
    points = 0
    for ci, category in enumerate(categories):
        by = frame.top + 4 + ci * group_h
        body.append(_text(frame.left - 8, by + bar_h - 5, category, anchor="end", cls="category"))
        x = 0.0
        for name, color, vs in parts:
            v = vs[ci] if ci < len(vs) else 0.0
            if not v or v <= 0:
                continue
            points += 1
            px0, px1 = scale(x), scale(x + v)
            body.append(
                f'<rect class="mark" data-count="1" data-part="{escape(name)}" x="{_f(px0)}" '
                f'y="{_f(by)}" width="{max(px1 - px0, 0.6):.2f}" height="{_f(bar_h)}" '
                f'fill="{color}" stroke="#fff" stroke-width="0.6">'
                f"<title>{escape(category)}, {escape(name)}: {escape(x_fmt(v))}</title></rect>"
            )
            x += v
        total = totals[ci] if totals is not None and ci < len(totals) else x
        body.append(
            _text(scale(max(x, total)) + 4, by + bar_h - 5, x_fmt(total), size=10, cls="value")
        )
    return _figure(
        _svg(chart_id, title, desc or title, height, body, points, "stacked-bars", width),
        title,
        caption,
    )
