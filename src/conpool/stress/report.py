"""The stress report: one self-contained HTML file rendered from the results.

:func:`render` takes the same JSON-ready dict that ``--json`` writes and
returns the whole page: inline CSS, inline SVG charts from
:mod:`conpool.stress.svg`, a few lines of inline script for the zoomable
timeline, no font, no image, no link to any other host (only to the
``--trace`` files next to it).  It is a pure function, so a report can be rebuilt from
saved results (``conpool stress --render results.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from . import svg
from .analysis import PART_LABELS, PARTS
from .svg import (
    ADDRESS_COLORS,
    OKABE_ITO,
    REASON_COLORS,
    Bar,
    Lane,
    Series,
    fmt_count,
    fmt_ms,
    fmt_rate,
)
from .timeline import interactive_timeline

__all__ = ["MAX_TIMELINE_BARS", "render", "summary_rows"]

#: An en dash, for ranges and missing values.
DASH = "\u2013"

#: Connections drawn on one timeline; beyond that the earliest ones are kept.
MAX_TIMELINE_BARS = 4000

_CSS = """
:root { --fg: #1a1a1a; --muted: #555; --line: #d0d0d0; --bg-alt: #f5f6f7; --accent: #0072B2; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 48px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.3rem; margin: 0 0 6px; padding-top: 8px; }
h3 { font-size: 1.05rem; margin: 18px 0 6px; }
h4 { font-size: 0.95rem; margin: 0 0 4px; }
p { margin: 4px 0 10px; }
a { color: var(--accent); }
.sub { color: var(--muted); margin: 0 0 14px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600;
  font-size: 0.85rem; border: 1px solid currentColor; }
.status.ok { color: #006e4f; } .status.warn { color: #a14300; }
section.scenario { border-top: 3px solid var(--line); margin-top: 28px; padding-top: 6px;
  break-before: page; }
table { border-collapse: collapse; font-size: 0.86rem; margin: 6px 0 12px; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.summary { width: 100%; }
table.summary td:first-child, table.summary td:nth-child(2) { white-space: nowrap; }
.bad { color: #b03a00; font-weight: 600; }
.cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 0 28px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
  gap: 18px 28px; margin-top: 10px; }
.charts .wide { grid-column: 1 / -1; }
figure { margin: 0; break-inside: avoid; }
figure svg.chart { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.82rem; margin-top: 2px; }
svg text { fill: #222;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
svg .grid { stroke: #e4e4e4; stroke-width: 1; }
svg .axis, svg .tickmark { stroke: #444; stroke-width: 1; }
svg .tick, svg .value { fill: #333; }
svg .label { fill: #111; font-weight: 600; }
svg .category { fill: #111; }
svg .marker { stroke: #000; stroke-width: 1.2; stroke-dasharray: 5 3; }
svg .marker-label { fill: #000; font-weight: 600; paint-order: stroke; stroke: #fff;
  stroke-width: 3px; stroke-linejoin: round; }
svg .pline { stroke: #333; stroke-width: 1; stroke-dasharray: 2 2; }
svg .pline-label { fill: #333; font-size: 10px; }
svg .lane { fill: #f4f5f6; }
pre { background: var(--bg-alt); padding: 8px 10px; overflow-x: auto; font-size: 0.8rem;
  margin: 4px 0; white-space: pre-wrap; word-break: break-word; }
details summary { cursor: pointer; color: var(--muted); }
nav ol { columns: 3 220px; margin: 4px 0 8px; padding-left: 22px; font-size: 0.9rem; }
.note { border-left: 4px solid #E69F00; background: #fff8e6; padding: 6px 10px; margin: 6px 0; }
.status.expected { color: #5b4b00; }
td.num.expected { white-space: normal; }
td.expected::after { content: " (expected)"; color: var(--muted); font-size: 0.8em; }
.note.skipped ul, .note ul { margin: 2px 0; }
.warn-cpu { border-left-color: #D55E00; background: #fff1ea; }
.tl-buttons { margin: 4px 0; }
.tl-buttons button { font: inherit; font-size: 0.85rem; padding: 2px 10px; margin-right: 4px; }
.tl-scroll { overflow-x: auto; }
.wide-table { overflow-x: auto; max-width: 100%; }
ul.traces { columns: 4 200px; }
svg.timeline { width: 100%; height: auto; display: block; user-select: none; cursor: grab; }
table.breakdown td, table.address-breakdown td, table.tail-requests td { white-space: nowrap; }
table.tail-requests td:last-child { white-space: normal; min-width: 260px; }
footer { margin-top: 40px; color: var(--muted); font-size: 0.8rem; }
@media print {
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  .charts { grid-template-columns: 1fr 1fr; gap: 10px 16px; }
  nav { display: none; }
  details { display: block; }
  a { color: inherit; text-decoration: none; }
}
@page { size: A4 landscape; margin: 12mm; }
"""


def _e(value: object) -> str:
    return escape(str(value))


def _num(value: float | int | None, text: str, field: str = "") -> str:
    data = "" if value is None else f' data-value="{value}"'
    fld = f' data-field="{field}"' if field else ""
    return f'<td class="num"{fld}{data}>{_e(text)}</td>'


def _ms(d: dict[str, Any], key: str) -> str:
    return fmt_ms(d.get(key))


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else DASH


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The numbers of the summary table, per scenario (used by the terminal table too)."""
    return [
        {
            "name": r["name"],
            "protocol": r["protocol"] + (" + TLS" if r.get("tls") else ""),
            "requests": r["requests"]["ok"],
            "throughput_rps": r["throughput_rps"],
            "p50": r["latency_ms"]["p50"],
            "p90": r["latency_ms"]["p90"],
            "p99": r["latency_ms"]["p99"],
            "max": r["latency_ms"]["max"],
            "acquire_p99": r["acquire_ms"]["p99"],
            "created": r["connections"]["created"],
            "reused": r["connections"]["reused"],
            "errors": r["requests"]["errors"],
        }
        for r in results.get("scenarios", [])
    ]


# ----------------------------------------------------------------------------
# Page parts


def _header(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    opts = results.get("options", {})
    scenarios = results.get("scenarios", [])
    expected = sum(r["requests"]["errors"] for r in scenarios if r.get("expected_errors"))
    errors = sum(r["requests"]["errors"] for r in scenarios) - expected
    target = opts.get("target")
    where = (
        f"against {target} ({opts.get('protocol')})"
        if target
        else f"against its own servers on 127.0.0.11{DASH}14"
    )
    if results.get("interrupted"):
        status = (
            f'<span class="status warn">interrupted: {len(scenarios)} of '
            f"{len(opts.get('scenarios', []))} scenarios finished</span>"
        )
    elif errors:
        status = f'<span class="status warn">{fmt_count(errors)} unexpected failed requests</span>'
    else:
        status = '<span class="status ok">no unexpected failed request</span>'
    if expected:
        names = ", ".join(
            r["name"] for r in scenarios if r.get("expected_errors") and r["requests"]["errors"]
        )
        status += (
            f' <span class="status expected">{fmt_count(expected)} expected failed '
            f"request{'s' if expected != 1 else ''} ({_e(names)}: injected faults)</span>"
        )
    return (
        "<header>"
        "<h1>conpool stress report</h1>"
        f'<p class="sub">{_e(results.get("started", ""))} · conpool {_e(env.get("conpool", "?"))} '
        f"· {_e(env.get('event_loop', env.get('backend', '?')))} · {where} · "
        f"{len(scenarios)} scenarios of {_e(opts.get('duration_s', '?'))} s with "
        f"{_e(opts.get('concurrency', '?'))} concurrent clients"
        + (f" · {results['elapsed_s']:.0f} s in all" if results.get("elapsed_s") else "")
        + f" · {status}</p>"
        + _skipped_top(results)
        + "</header>"
    )


def _skipped_top(results: dict[str, Any]) -> str:
    skipped = results.get("skipped", [])
    if not skipped:
        return ""
    items = "".join(f"<li><b>{_e(s['name'])}</b>: {_e(s['reason'])}</li>" for s in skipped)
    return (
        f'<div class="note skipped" id="skipped"><b>{len(skipped)} scenario'
        f"{'s' if len(skipped) != 1 else ''} not run</b><ul>{items}</ul></div>"
    )


def _summary_table(results: dict[str, Any]) -> str:
    head = (
        "<tr><th>Scenario</th><th>Protocol</th><th class=num>Requests</th>"
        "<th class=num>Throughput</th><th class=num>p50</th><th class=num>p90</th>"
        "<th class=num>p99</th><th class=num>max</th><th class=num>Acquire wait p99</th>"
        "<th class=num>Connections created</th><th class=num>Reused</th>"
        "<th class=num>Errors</th></tr>"
    )
    body = []
    expected = {r["name"] for r in results.get("scenarios", []) if r.get("expected_errors")}
    for row in summary_rows(results):
        if row["errors"] and row["name"] in expected:
            # Marked by the stylesheet: the cell's text stays the number alone.
            err_cls = ' class="num expected" title="expected: faults injected on purpose"'
        else:
            err_cls = ' class="num bad"' if row["errors"] else ' class="num"'
        body.append(
            f'<tr data-scenario="{_e(row["name"])}">'
            f'<td><a href="#s-{_e(row["name"])}">{_e(row["name"])}</a></td>'
            f"<td>{_e(row['protocol'])}</td>"
            + _num(row["requests"], f"{row['requests']:,}", "requests")
            + _num(
                row["throughput_rps"], f"{round(row['throughput_rps']):,} req/s", "throughput_rps"
            )
            + _num(row["p50"], fmt_ms(row["p50"]), "p50")
            + _num(row["p90"], fmt_ms(row["p90"]), "p90")
            + _num(row["p99"], fmt_ms(row["p99"]), "p99")
            + _num(row["max"], fmt_ms(row["max"]), "max")
            + _num(row["acquire_p99"], fmt_ms(row["acquire_p99"]), "acquire_p99")
            + _num(row["created"], f"{row['created']:,}", "created")
            + _num(row["reused"], f"{row['reused']:,}", "reused")
            + f'<td{err_cls} data-field="errors" data-value="{row["errors"]}">'
            f"{row['errors']:,}</td></tr>"
        )
    return (
        '<table class="summary" id="summary"><caption hidden>Summary per scenario</caption>'
        f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="sub">Latency: from asking the pool for a connection to the last byte of the '
        "answer (acquire wait included). Acquire wait: until the pool handed a connection out. "
        "Reused: hand-outs of an already open connection.</p>"
    )


def _comparison(results: dict[str, Any]) -> str:
    scenarios = results.get("scenarios", [])
    if not scenarios:
        return ""
    names = [r["name"] for r in scenarios]
    charts = [
        svg.hbar_chart(
            "cmp-throughput",
            "Throughput per scenario",
            names,
            [("requests per second", OKABE_ITO["blue"], [r["throughput_rps"] for r in scenarios])],
            x_label="completed requests per second (req/s)",
            y_label="scenario",
            x_fmt=lambda v: f"{round(v):,}",
            caption="Successful requests divided by the scenario's run time.",
        ),
        svg.hbar_chart(
            "cmp-latency",
            "Latency percentiles per scenario",
            names,
            [
                ("p50", OKABE_ITO["sky"], [r["latency_ms"]["p50"] for r in scenarios]),
                ("p90", OKABE_ITO["blue"], [r["latency_ms"]["p90"] for r in scenarios]),
                ("p99", OKABE_ITO["vermillion"], [r["latency_ms"]["p99"] for r in scenarios]),
            ],
            x_label="request latency (ms, logarithmic)",
            y_label="scenario",
            x_fmt=fmt_ms,
            log=True,
            caption="Logarithmic axis: equal distances are equal ratios.",
        ),
        svg.hbar_chart(
            "cmp-connections",
            "Connections created vs reused per scenario",
            names,
            [
                (
                    "created",
                    OKABE_ITO["orange"],
                    [r["connections"]["created"] or None for r in scenarios],
                ),
                (
                    "reused",
                    OKABE_ITO["green"],
                    [r["connections"]["reused"] or None for r in scenarios],
                ),
            ],
            x_label="connections created / hand-outs of a reused connection (count, logarithmic)",
            y_label="scenario",
            x_fmt=fmt_count,
            log=True,
            caption="Zero counts draw no bar.",
        ),
        svg.hbar_chart(
            "cmp-acquire",
            "Acquire wait p99 per scenario",
            names,
            [
                (
                    "acquire wait p99",
                    OKABE_ITO["purple"],
                    [r["acquire_ms"]["p99"] for r in scenarios],
                )
            ],
            x_label="time waiting for a connection, 99th percentile (ms, logarithmic)",
            y_label="scenario",
            x_fmt=fmt_ms,
            log=True,
        ),
    ]
    return (
        '<section id="comparison"><h2>Comparison across scenarios</h2>'
        f'<div class="charts">{"".join(charts)}</div></section>'
    )


def _kv_table(rows: Sequence[tuple[str, str]], cls: str = "") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def _percentile_table(r: dict[str, Any]) -> str:
    rows = []
    for label, key in (
        ("request latency", "latency_ms"),
        ("acquire wait", "acquire_ms"),
        ("connect (TCP + TLS)", "connect_ms"),
    ):
        d = r[key]
        cells = "".join(
            _num(d.get(p), _ms(d, p), f"{key}.{p}") for p in ("min", "p50", "p90", "p99", "max")
        )
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    head = (
        "<tr><th></th><th class=num>min</th><th class=num>p50</th><th class=num>p90</th>"
        "<th class=num>p99</th><th class=num>max</th></tr>"
    )
    return f'<table class="percentiles"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _figures(r: dict[str, Any]) -> tuple[str, str]:
    """Key figures: counts and percentiles."""
    req = r["requests"]
    c = r["connections"]
    reasons = ", ".join(f"{k} {v:,}" for k, v in c["close_reasons"].items()) or "none"
    counts = [
        ("requests completed", f"{req['ok']:,}"),
        ("failed requests", f"{req['errors']:,}"),
        ("throughput", f"{round(r['throughput_rps']):,} req/s over {r['elapsed_s']:.2f} s"),
        ("connections created", f"{c['created']:,}"),
        (
            "hand-outs of a reused connection",
            f"{c['reused']:,} of {c['handouts']:,} ({_pct(c['reused'], c['handouts'])})",
        ),
        ("connections closed, by reason", reasons),
        ("connect attempts failed (then retried)", f"{c['connect_failed']:,}"),
        ("acquires that queued for a slot", f"{c['acquire_queued']:,}"),
    ]
    server = r.get("server")
    if server and server.get("accepted"):
        accepted = sum(server["accepted"].values())
        counts.append(("connections the server accepted", f"{accepted:,}"))
    rows = "".join(f"<tr><th>{_e(k)}</th><td class=num>{_e(v)}</td></tr>" for k, v in counts)
    return f'<table class="figures"><tbody>{rows}</tbody></table>', _percentile_table(r)


def _address_table(r: dict[str, Any]) -> str:
    per = r["connections"]["per_address"]
    total = sum(v["handouts"] for v in per.values())
    fails: dict[str, int] = {}
    for f in r["connect_failures"]:
        fails[f["address"]] = fails.get(f["address"], 0) + f["count"]
    rows = []
    for ip, v in per.items():
        rows.append(
            f"<tr><td>{_e(ip)}</td>"
            + _num(v["created"], f"{v['created']:,}")
            + _num(v["handouts"], f"{v['handouts']:,}")
            + _num(None, _pct(v["handouts"], total))
            + _num(fails.get(ip, 0), f"{fails.get(ip, 0):,}")
            + "</tr>"
        )
    head = (
        "<tr><th>Address</th><th class=num>Connections created</th><th class=num>Requests</th>"
        "<th class=num>Share</th><th class=num>Connect failures</th></tr>"
    )
    return f'<table class="addresses"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _address_colors(addresses: Sequence[str]) -> dict[str, str]:
    return {ip: ADDRESS_COLORS[i % len(ADDRESS_COLORS)] for i, ip in enumerate(addresses)}


def _charts(r: dict[str, Any], idx: int) -> str:
    name = r["name"]
    cid = f"c{idx}"
    ts = r["timeseries"]
    markers = [(m["t_s"], m["label"]) for m in r.get("markers", [])]
    lifetimes = r["lifetimes"]
    end = max(
        [r["elapsed_s"], r["duration_s"]]
        + [lt[3] for lt in lifetimes if lt[3] is not None]
        + list(ts["t_s"][-1:])
    )
    domain = (0.0, end)
    out = []

    series = [Series("completed requests", OKABE_ITO["blue"], ts["bucket_s"], ts["rps"])]
    if any(ts["errors_per_s"]):
        series.append(
            Series(
                "failed requests",
                OKABE_ITO["vermillion"],
                ts["bucket_s"],
                ts["errors_per_s"],
                dash="5 3",
            )
        )
    out.append(
        svg.line_chart(
            f"{cid}-rps",
            "Throughput over time",
            series,
            x_label="time since start (s)",
            y_label="requests per second (req/s)",
            x_domain=domain,
            markers=markers,
            caption=f"Requests finished per {ts['bucket_interval_s'] * 1000:g} ms, as a rate.",
            desc=f"Throughput of scenario {name} over time",
        )
    )

    hist = r["histogram"]
    if hist["edges"]:
        lat = r["latency_ms"]
        out.append(
            svg.histogram_chart(
                f"{cid}-hist",
                "Latency and acquire wait distribution",
                hist["edges"],
                [
                    ("request latency", OKABE_ITO["blue"], hist["latency"]),
                    ("acquire wait", OKABE_ITO["orange"], hist["acquire"]),
                ],
                x_label="duration (ms, logarithmic; waits under 1 µs in the first bin)",
                y_label="requests (count)",
                vlines=[
                    (lat["p50"], f"p50 {fmt_ms(lat['p50'])}"),
                    (lat["p99"], f"p99 {fmt_ms(lat['p99'])}"),
                ]
                if lat["p50"] is not None
                else [],
                caption="Dotted lines: latency percentiles.",
                desc=f"Distribution of latency and acquire wait in scenario {name}",
            )
        )

    addresses = r["addresses"]
    colors = _address_colors(addresses)
    addr_series = ts["addresses"]
    if ts["t_s"] and addr_series:
        layers = []
        n = len(ts["t_s"])
        in_use = [0.0] * n
        for ip in addresses:
            s = addr_series.get(ip)
            if s is None:
                continue
            values = [s["active"][i] + s["idle"][i] + s["pending"][i] for i in range(n)]
            for i in range(n):
                in_use[i] += s["active"][i]
            layers.append((ip, colors[ip], values))
        out.append(
            svg.stacked_area_chart(
                f"{cid}-conns",
                "Open connections per address",
                ts["t_s"],
                layers,
                x_label="time since start (s)",
                y_label="connections (count)",
                x_domain=domain,
                overlay=Series(
                    "in use (all addresses)", OKABE_ITO["black"], ts["t_s"], in_use, dash="4 3"
                ),
                markers=markers,
                caption=f"pool.stats() sampled every {ts['interval_s'] * 1000:g} ms: idle, in use "
                "and connecting, stacked by address.",
                desc=f"Connections per address over time in scenario {name}",
            )
        )

    per = r["connections"]["per_address"]
    if per:
        out.append(
            svg.hbar_chart(
                f"{cid}-share",
                "Requests served per address",
                list(per),
                [("requests", OKABE_ITO["blue"], [v["handouts"] for v in per.values()])],
                x_label="requests (count)",
                y_label="address",
                caption="Hand-outs of a connection to each address (one per request).",
                desc=f"Requests per address in scenario {name}",
            )
        )

    if lifetimes:
        shown = lifetimes[:MAX_TIMELINE_BARS]
        lanes = {ip: Lane(ip) for ip in addresses}
        for conn_id, ip, start, stop, reason in shown:
            lane = lanes.setdefault(ip, Lane(ip))
            span = f"{start:.3f}{DASH}{stop:.3f} s" if stop is not None else f"from {start:.3f} s"
            lane.bars.append(
                Bar(start, stop, reason, f"connection #{conn_id} to {ip}, {span}, closed: {reason}")
            )
        cap = (
            "One bar per connection, from connected to closed; overlapping connections stack. "
            f"An address with more than {svg.MAX_LANE_ROWS} at once shows how many were open, "
            "with a tick per close."
        )
        if len(lifetimes) > len(shown):
            cap += f" Showing the first {len(shown):,} of {len(lifetimes):,} connections."
        out.append(
            '<div class="wide">'
            + svg.timeline_chart(
                f"{cid}-life",
                "Connection lifetimes by address, coloured by close reason",
                [lanes[k] for k in lanes],
                x_domain=domain,
                colors=REASON_COLORS,
                markers=markers,
                caption=cap,
                desc=f"Lifetimes of the {len(shown)} connections of scenario {name}",
                width=1240,
            )
            + "</div>"
        )
    return f'<div class="charts">{"".join(out)}</div>'


def _errors(r: dict[str, Any]) -> str:
    errors = r["errors"]
    parts = []
    if errors and r.get("expected_errors"):
        parts.append(
            f'<h3>Errors</h3><p class="expected-errors"><b>{r["requests"]["errors"]:,} failed '
            f"request{'s' if r['requests']['errors'] != 1 else ''}, expected:</b> "
            f"{_e(r['expected_errors'])}.</p>"
        )
    if errors:
        items = []
        for g in errors:
            tb = ""
            if g.get("traceback"):
                tb = (
                    "<details><summary>traceback of the first one</summary>"
                    f"<pre>{_e(g['traceback'])}</pre></details>"
                )
            items.append(
                f'<tr><td class="num">{g["count"]:,}</td><td class="num">{g["first_s"]:.3f}&ndash;'
                f"{g['last_s']:.3f} s</td><td><pre>{_e(g['message'])}</pre>{tb}</td></tr>"
            )
        parts.append(
            ("" if r.get("expected_errors") else "<h3>Errors</h3>")
            + '<table class="errors"><thead><tr><th class=num>Count</th><th class=num>When</th>'
            f"<th>Error (with its causes)</th></tr></thead><tbody>{''.join(items)}</tbody></table>"
        )
    else:
        parts.append("<h3>Errors</h3><p>No request failed.</p>")
    failures = r["connect_failures"]
    if failures:
        rows = "".join(
            f"<tr><td>{_e(f['address'])}</td><td class=num>{f['count']:,}</td>"
            f"<td><pre>{_e(f['detail'])}</pre></td></tr>"
            for f in failures
        )
        parts.append(
            "<h3>Connect attempts that failed</h3>"
            "<p>Each was retried by the pool (on another address when one was free); a request "
            "fails only when every attempt did.</p>"
            '<table class="connect-failures"><thead><tr><th>Address</th><th class=num>Count</th>'
            f"<th>Error</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    events = r.get("address_events", [])
    if events:
        rows = "".join(
            f"<tr><td class=num>{t:.3f} s</td><td>{_e(ip)}</td><td>{_e(kind)}</td>"
            f"<td>{_e(detail)}</td></tr>"
            for t, kind, ip, detail in events
        )
        parts.append(
            "<h3>Address health</h3>"
            "<p>Addresses the pool took out of rotation after failed connects, and put back.</p>"
            '<table class="address-events"><thead><tr><th class=num>When</th><th>Address</th>'
            f"<th>Event</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def _config(r: dict[str, Any]) -> str:
    cfg = r["config"]
    rows = [(k, _config_value(k, v)) for k, v in cfg.items()]
    trace = r["trace"]
    rows2 = [
        ("endpoint", r["endpoint"] + (" (TLS)" if r["tls"] else "")),
        ("protocol", r["protocol_detail"]),
        ("concurrent clients", f"{r['concurrency']} tasks"),
        (
            "think time between requests",
            f"{r['think_s'][0] * 1000:g}{DASH}{r['think_s'][1] * 1000:g} ms"
            if r["think_s"][1]
            else "none",
        ),
        (
            "bursts",
            f"{r['burst_s'][1] * 1000:g} ms of requests every {r['burst_s'][0] * 1000:g} ms"
            if r.get("burst_s")
            else "none: continuous load",
        ),
        ("planned duration", f"{r['duration_s']:g} s"),
        (
            "trace events",
            f"{trace['events']:,} ({trace['dropped']:,} dropped, ring of {trace['capacity']:,})",
        ),
        (
            "trace file",
            r["trace_file"] if r.get("trace_file") else "none (run with --trace DIR)",
        ),
    ]
    return (
        "<details><summary>Pool configuration and trace</summary>"
        f'<div class="cols">{_kv_table(rows2)}{_kv_table(rows, "config")}</div></details>'
    )


_SECONDS = (
    "max_idle_time",
    "max_connection_lifetime",
    "connect_timeout",
    "retry_backoff",
    "retry_backoff_max",
    "acquire_timeout",
    "eject_time",
    "eject_time_max",
    "happy_eyeballs_delay",
    "sweep_interval",
    "dns_stale_limit",
    "leak_warning_after",
)
_UNITS = {
    "max_connections_per_endpoint": "connections",
    "max_connections": "connections",
    "max_connection_uses": "uses",
    "connect_retries": "retries",
    "max_waiters": "tasks",
    "eject_after_failures": "failures",
}


def _config_value(key: str, value: Any) -> str:
    """A configuration value with its unit: ``0.005 s (5 ms)``, ``16 connections``."""
    if value is None:
        return "None (no limit)" if key not in ("balance_seed",) else "None (random)"
    if value == "inf":
        return "inf (no limit)"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "none"
    if key in _SECONDS and isinstance(value, (int, float)):
        text = f"{value:g} s"
        return text + f" ({fmt_ms(value * 1000)})" if 0 < value < 1 else text
    if key in ("max_ejected_share", "lifetime_jitter") and isinstance(value, (int, float)):
        return f"{value:g} ({value * 100:g} %)"
    if key in _UNITS and isinstance(value, int):
        return f"{value:,} {_UNITS[key]}"
    return repr(value) if isinstance(value, str) else str(value)


def _parts(scenarios: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The parts to show: ``budget`` only where a scenario had a fleet budget."""
    if any(r.get("budget") or r.get("fleet") for r in scenarios):
        return PARTS
    return tuple(p for p in PARTS if p != "budget")


def _mean(b: dict[str, Any], p: str) -> float:
    # (Results saved before the budget part existed have no "budget".)
    value: float = b.get(p, 0.0)
    return value


def _address_breakdown(r: dict[str, Any]) -> str:
    b = r.get("breakdown") or {}
    by = b.get("by_address") or {}
    if not by:
        return ""
    head = (
        "<tr><th>Address</th><th class=num>Requests</th><th class=num>Mean request</th>"
        + "".join(f"<th class=num>{_e(PART_LABELS[p])}</th>" for p in _parts([r]))
        + "</tr>"
    )
    rows = "".join(
        f'<tr data-address="{_e(ip)}"><td>{_e(ip)}</td>'
        + _num(v["requests"], f"{v['requests']:,}")
        + _num(v["total"], fmt_ms(v["total"]), "address.total")
        + "".join(_num(_mean(v, p), fmt_ms(_mean(v, p)), f"address.{p}") for p in _parts([r]))
        + "</tr>"
        for ip, v in by.items()
    )
    return (
        "<h3>Where the time goes, per address</h3>"
        '<div class="wide-table"><table class="address-breakdown">'
        f"<thead>{head}</thead><tbody>{rows}</tbody></table></div>"
    )


def _scenario(r: dict[str, Any], idx: int) -> str:
    figures, percentiles = _figures(r)
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in r.get("notes", []))
    return (
        f'<section class="scenario" id="s-{_e(r["name"])}" data-scenario="{_e(r["name"])}">'
        f"<h2>{_e(r['title'])} <small>({_e(r['name'])})</small></h2>"
        f"<p>{_e(r['description'])}</p>{notes}"
        f'<div class="cols">{figures}<div>{percentiles}{_address_table(r)}</div></div>'
        f"{_fleet(r)}{_charts(r, idx)}{_address_breakdown(r)}{_tail(r)}{_errors(r)}"
        f"{_config(r)}</section>"
    )


def _option_name(key: str) -> str:
    return {"duration_s": "duration per scenario", "concurrency": "concurrent clients"}.get(
        key, key.replace("_", " ")
    )


def _option_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if key == "duration_s":
        return f"{value:g} s"
    if key == "concurrency":
        return f"{value} tasks"
    return str(value)


def _environment(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    opts = results.get("options", {})
    rows = [(k.replace("_", " "), "" if v is None else str(v)) for k, v in env.items()]
    opt_rows = [(_option_name(k), _option_value(k, v)) for k, v in opts.items()]
    servers = results.get("servers") or {}
    srv_rows = [(k.replace("_", " "), str(v)) for k, v in servers.items()]
    extra = ""
    skipped = results.get("skipped", [])
    if skipped:
        items = "".join(f"<li><b>{_e(s['name'])}</b>: {_e(s['reason'])}</li>" for s in skipped)
        extra += f"<h3>Scenarios not run</h3><ul>{items}</ul>"
    log = results.get("log", [])
    if log:
        items = "".join(
            f"<tr><td class=num>{entry['count']:,}</td><td>{_e(entry['logger'])}</td>"
            f"<td>{_e(entry['level'])}</td><td><pre>{_e(entry['message'])}</pre></td></tr>"
            for entry in log
        )
        extra += (
            "<h3>Log messages during the run</h3>"
            '<table class="log"><thead><tr><th class=num>Count</th><th>Logger</th><th>Level</th>'
            f"<th>Message</th></tr></thead><tbody>{items}</tbody></table>"
        )
    return (
        '<section id="environment"><h2>Configuration and environment</h2>'
        '<div class="cols">'
        f"<div><h3>Environment</h3>{_kv_table(rows)}</div>"
        f"<div><h3>Options</h3>{_kv_table(opt_rows)}"
        + (f"<h3>Servers</h3>{_kv_table(srv_rows)}" if srv_rows else "")
        + f"</div></div>{extra}</section>"
    )


def _nav(results: dict[str, Any]) -> str:
    items = "".join(
        f'<li><a href="#s-{_e(r["name"])}">{_e(r["title"])}</a></li>'
        for r in results.get("scenarios", [])
    )
    return (
        '<nav aria-label="Contents"><ol>'
        '<li><a href="#time">Where the time goes</a></li>'
        '<li><a href="#balance">Balancing policies compared</a></li>'
        '<li><a href="#timeline-section">Timeline and traces</a></li>'
        '<li><a href="#comparison">Comparison</a></li>'
        f"{items}"
        '<li><a href="#environment">Configuration and environment</a></li>'
        "</ol></nav>"
    )


def render(results: dict[str, Any]) -> str:
    """The whole HTML page for ``results`` (the dict ``--json`` writes)."""
    scenarios = results.get("scenarios", [])
    body = [
        _header(results),
        _summary_table(results) if scenarios else "<p>No scenario finished.</p>",
        _nav(results),
        _breakdown_section(results),
        _balance_section(results),
        _timeline_section(results),
        _comparison(results),
    ]
    body.extend(_scenario(r, i) for i, r in enumerate(scenarios))
    body.append(_environment(results))
    body.append(
        f"<footer>Written by conpool stress {_e(results.get('environment', {}).get('conpool', ''))}"
        f" at {_e(results.get('finished', ''))}. Every chart is inline SVG drawn by conpool, the "
        "timeline's zoom a few lines of inline script; this file loads nothing else.</footer>"
    )
    title = "conpool stress report"
    if results.get("started"):
        title += f" {DASH} {results['started']}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No favicon request: an empty inline icon.
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


# ----------------------------------------------------------------------------
# Where the time goes

#: Short column heads for the parts (the chart's legend has the long names).
PART_SHORT = {
    "wait": "wait",
    "budget": "budget",
    "resolve": "resolve",
    "connect": "connect",
    "tls": "TLS",
    "pool": "pool",
    "wire": "wire",
    "lag": "loop lag",
}

PART_COLORS = {
    "wait": OKABE_ITO["purple"],
    "budget": OKABE_ITO["grey"],
    "resolve": OKABE_ITO["yellow"],
    "connect": OKABE_ITO["orange"],
    "tls": OKABE_ITO["vermillion"],
    "pool": OKABE_ITO["black"],
    "wire": OKABE_ITO["sky"],
    "lag": OKABE_ITO["green"],
}

#: The client counts as starved when it waited for a CPU this share of the run.
STARVED_SHARE = 0.10


def _cpu_text(cpu: dict[str, Any] | None, key: str) -> str:
    d = (cpu or {}).get(key)
    if not d:
        return DASH
    return f"{d['cpu_share'] * 100:.0f} % ({d['cpu_s'] * 1000:.0f} ms)"


def _starved(r: dict[str, Any]) -> str | None:
    """Why the client was starved of CPU in scenario ``r``, or None."""
    cpu = r.get("cpu") or {}
    client = cpu.get("client") or {}
    share = client.get("runqueue_share")
    if share is None or share < STARVED_SHARE:
        return None
    machine = cpu.get("machine") or {}
    others = ""
    if machine.get("total_s"):
        ours = client.get("cpu_s", 0.0) + ((cpu.get("server") or {}).get("cpu_s", 0.0))
        rest = max(0.0, machine["busy_s"] - ours)
        others = (
            f"; other processes used {rest / cpu['wall_s']:.2f} of the machine's "
            f"{cpu.get('cpus') or '?'} CPUs"
        )
    return (
        f"the client's event loop was ready to run but waiting for a CPU for "
        f"{client['runqueue_s'] * 1000:.0f} ms of {cpu['wall_s'] * 1000:.0f} ms "
        f"({share * 100:.0f} %){others}: its latencies include that wait"
    )


def _breakdown_section(results: dict[str, Any]) -> str:
    scenarios = [r for r in results.get("scenarios", []) if r.get("breakdown")]
    if not scenarios:
        return ""
    names = [r["name"] for r in scenarios]
    parts = _parts(scenarios)
    chart = svg.stacked_hbar_chart(
        "time-breakdown",
        "Where a request's time goes, per scenario (mean)",
        names,
        [
            (
                PART_LABELS[p],
                PART_COLORS[p],
                [_mean(r["breakdown"]["mean_ms"], p) for r in scenarios],
            )
            for p in parts
        ],
        x_label="mean time per request (ms)",
        y_label="scenario",
        totals=[r["breakdown"]["total_ms"] for r in scenarios],
        caption="Each bar is the mean request time, cut into its measured parts; the number "
        "after it is the mean measured time.",
        width=1240,
    )
    head = (
        "<tr><th>Scenario</th><th class=num>Mean request</th>"
        + "".join(
            f'<th class=num title="{_e(PART_LABELS[p])}">{_e(PART_SHORT[p])}</th>' for p in parts
        )
        + "<th class=num>Client CPU</th><th class=num>Server CPU</th>"
        '<th class=num title="time the client was runnable but not running">Client '
        "waiting</th></tr>"
    )
    rows = []
    warnings: list[tuple[str, str, float]] = []
    for r in scenarios:
        b = r["breakdown"]
        total = b["total_ms"] or 0.0
        cells = "".join(
            _num(_mean(b["mean_ms"], p), fmt_ms(_mean(b["mean_ms"], p)), f"breakdown.{p}")
            for p in parts
        )
        cpu = r.get("cpu") or {}
        client = cpu.get("client") or {}
        rq = client.get("runqueue_share")
        starved = _starved(r)
        if starved:
            warnings.append((r["name"], starved, rq or 0.0))
        rows.append(
            f'<tr data-scenario="{_e(r["name"])}"><td><a href="#s-{_e(r["name"])}">'
            f"{_e(r['name'])}</a></td>"
            + _num(total, fmt_ms(total), "breakdown.total")
            + cells
            + _num(None, _cpu_text(cpu, "client"))
            + _num(None, _cpu_text(cpu, "server"))
            + (
                f'<td class="num{" bad" if starved else ""}">{rq * 100:.0f} %</td>'
                if rq is not None
                else f'<td class="num">{DASH}</td>'
            )
            + "</tr>"
        )
    warn = ""
    if warnings:
        worst = max(warnings, key=lambda w: w[2])
        starved_names = ", ".join(f"{n} {share * 100:.0f} %" for n, _text, share in warnings)
        warn = (
            '<div class="note warn-cpu"><b>The client was starved of CPU</b> in '
            f"{len(warnings)} of {len(scenarios)} scenarios (share of the run it waited for a "
            f"CPU: {_e(starved_names)}); their latencies measure the machine as much as the pool. "
            f"Worst, {_e(worst[0])}: {_e(worst[1])}.</div>"
        )
    gap = max(r["breakdown"]["max_gap_ns"] for r in scenarios)
    return (
        '<section id="time"><h2>Where the time goes</h2>'
        "<p>Every request's time, from asking the pool for a connection to having given it "
        "back, cut into parts measured with the client's clock and the pool's trace events: "
        "<b>waiting for a slot</b> (parked until a connection was free: the pool's "
        "<code>acquire.granted</code> duration), "
        + (
            "<b>waiting for the fleet budget</b> (from the slot to the fleet's lease, "
            "<code>budget.granted</code>: the Redis round trip of a dial and any wait while "
            "the fleet is at its limit), "
            if "budget" in parts
            else ""
        )
        + "<b>resolving</b>, <b>connecting</b> (failed "
        "attempts and retry back-off included), <b>TLS</b>, <b>the pool's own work</b> (the "
        "rest of the acquire and all of the release), the <b>exchange on the wire</b>, and "
        "<b>event-loop lag</b>: from a grant to the waiter running again (measured per "
        "request) plus the lateness of the loop probe (a task sleeping 10 ms at a time) at the "
        "moment the answer was read, at most the exchange's time. The wire part is the "
        "exchange less that lag. The parts add up to the measured time "
        f"(largest difference over every request: {gap} ns).</p>"
        f"{warn}{chart}"
        '<div class="wide-table"><table class="breakdown" id="breakdown">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="sub">CPU: user + system time of the process over the scenario\'s wall time '
        "(100 % is one core). Client waiting: time the client's event-loop thread was "
        "runnable but not running (<code>/proc/self/schedstat</code>); above "
        f"{STARVED_SHARE * 100:.0f} % the client counts as starved.</p>"
        f"{_queueing_note(scenarios, results)}</section>"
    )


def _queueing_note(scenarios: Sequence[dict[str, Any]], results: dict[str, Any]) -> str:
    """Little's law: with more clients than connections, waiting is what a request does most."""
    items = []
    for r in scenarios:
        limit = r["config"].get("max_connections_per_endpoint")
        clients = r["concurrency"]
        b = r["breakdown"]
        if not isinstance(limit, int) or clients <= limit or not b["total_ms"]:
            continue
        share = b["mean_ms"]["wait"] / b["total_ms"]
        if share < 0.5:
            continue
        items.append(
            f"{r['name']} ({clients} clients, at most {limit} connection"
            f"{'s' if limit != 1 else ''}: {share * 100:.0f} % waiting)"
        )
    if not items:
        return ""
    return (
        '<p class="note">Where there are more clients than connections, most of a request\'s '
        "time is its turn in the queue: by Little's law the mean request time is the number of "
        "clients over the throughput, whatever the pool does; the other parts show what one "
        f"turn costs. Here: {_e('; '.join(items))}.</p>"
    )


def _tail_sentence(r: dict[str, Any]) -> str:
    t = r.get("tail") or {}
    if not t.get("sample"):
        return "No request finished."
    common = [f for f in t["factors"] if f["common"]]
    biggest = t["biggest_part"]
    slow, overall = t["slow_mean_ms"][biggest], t["all_mean_ms"][biggest]
    head = (
        f"The {t['sample']} slowest requests (from {fmt_ms(t['threshold_ms'])}) spent "
        f"{fmt_ms(slow)} on average {PART_LABELS[biggest]} against {fmt_ms(overall)} for all "
        "requests"
    )
    if not common:
        return head + "; no circumstance is shared by most of them more than by the rest."
    parts = [
        f"{f['slow_share'] * 100:.0f} % {f['factor']} (of all requests: "
        f"{f['all_share'] * 100:.0f} %)"
        for f in common[:3]
    ]
    return head + ". What they have in common: " + "; ".join(parts) + "."


def _tail(r: dict[str, Any]) -> str:
    t = r.get("tail") or {}
    if not t.get("sample"):
        return ""
    lag = r.get("lag") or {}
    rows = "".join(
        f"<tr><td>{_e(f['factor'])}</td><td class=num>{f['slow']:,} of {t['sample']:,} "
        f"({f['slow_share'] * 100:.0f} %)</td><td class=num>{f['all_share'] * 100:.1f} %</td>"
        f"<td>{'yes' if f['common'] else ''}</td></tr>"
        for f in t["factors"][:8]
    )
    samples = "".join(
        f"<tr><td class=num>{q['t_s'] * 1000:.1f} ms</td><td class=num>"
        f"{fmt_ms(q['total_ms'])}</td><td>{_e(q['address'])} #{q['conn_id']}</td>"
        + "".join(
            f"<td class=num>{fmt_ms(_mean(q['parts_ms'], p)) if _mean(q['parts_ms'], p) else ''}"
            "</td>"
            for p in _parts([r])
        )
        + f"<td>{_e(', '.join(q['flags']))}</td></tr>"
        for q in t["requests"][:10]
    )
    lag_text = ""
    if lag.get("probes"):
        causes = ", ".join(f"{c} {n}" for n, c in lag["spike_causes"].items()) or "none"
        gc = "; ".join(
            f"generation {g}: {d['count']} collections, {d['total_ms']:.1f} ms in all, longest "
            f"{d['max_ms']:.2f} ms"
            for g, d in lag["gc"].items()
        )
        lag_text = (
            f"<p>Event-loop lag (probe every {lag['interval_ms']:g} ms, {lag['probes']:,} "
            f"measurements): p50 {fmt_ms(lag['p50_ms'])}, p99 {fmt_ms(lag['p99_ms'])}, max "
            f"{fmt_ms(lag['max_ms'])}. Spikes of {fmt_ms(lag['spike_threshold_ms'])} or more: "
            f"{lag['spikes']:,}, during: {_e(causes)}. Garbage collections: "
            f"{_e(gc or 'none')}. The stress tool's own sampler ran {lag['sampler_runs']:,} "
            f"times for {lag['sampler_total_ms']:.1f} ms in all (longest "
            f"{fmt_ms(lag['sampler_max_ms'])}).</p>"
        )
    head = "".join(f"<th class=num>{_e(PART_LABELS[p])}</th>" for p in _parts([r]))
    return (
        '<div class="tail"><h3>Why the slowest requests were slow</h3>'
        f'<p class="tail-verdict">{_e(_tail_sentence(r))}</p>{_waves_text(r)}{lag_text}'
        '<table class="tail-factors"><thead><tr><th>Circumstance</th>'
        "<th class=num>Among the slowest</th><th class=num>Among all requests</th>"
        f"<th>Shared</th></tr></thead><tbody>{rows}</tbody></table>"
        "<details><summary>the ten slowest requests, part by part</summary>"
        '<div class="wide-table"><table class="tail-requests"><thead><tr><th class=num>Started</th>'
        f"<th class=num>Took</th><th>Connection</th>{head}<th>Circumstances</th></tr></thead>"
        f"<tbody>{samples}</tbody></table></div></details></div>"
    )


def _waves_text(r: dict[str, Any]) -> str:
    waves = r.get("waves") or []
    if not waves:
        return ""
    reasons = sorted({w["reason"] for w in waves})
    sizes = [w["size"] for w in waves]
    fix = []
    if "lifetime" in reasons:
        fix.append(
            "Config.lifetime_jitter spreads lifetimes so that connections opened together "
            "are not all replaced together"
        )
    if "uses" in reasons:
        fix.append(
            "max_connection_uses retires connections that served the same number of "
            "requests, and the pool hands requests out evenly, so they reach the limit "
            "together (no jitter option spreads that yet)"
        )
    return (
        f'<p class="note waves"><b>Connection retirement waves:</b> {len(waves)} times, '
        f"{min(sizes)}{DASH}{max(sizes)} connections closed within 20 ms for the same reason "
        f"({_e(', '.join(reasons))}), first at {waves[0]['start_s'] * 1000:.0f} ms. Each wave "
        "leaves the pool re-dialling at once: the \u201cin use\u201d line drops and throughput "
        f"dips. {_e('; '.join(fix))}.</p>"
    )


# ----------------------------------------------------------------------------
# Balancing


def _balance_section(results: dict[str, Any]) -> str:
    runs = [r for r in results.get("scenarios", []) if r["group"] == "balance"]
    if not runs:
        return ""
    policies = [r["config"]["balance"] for r in runs]
    addresses: list[str] = []
    for r in runs:
        for ip in r["connections"]["per_address"]:
            if ip not in addresses:
                addresses.append(ip)
    shares: list[list[float | None]] = []
    rows = []
    for r in runs:
        per = r["connections"]["per_address"]
        total = sum(v["handouts"] for v in per.values()) or 1
        share = [100.0 * per.get(ip, {}).get("handouts", 0) / total for ip in addresses]
        shares.append([s or None for s in share])
        counts = [per.get(ip, {}).get("handouts", 0) for ip in addresses]
        ratio = max(counts) / max(min(counts), 1) if counts else 0
        by_addr = (r.get("breakdown") or {}).get("by_address", {})
        over_time = [v for v in (r.get("balance_time") or {}).get("imbalance", []) if v]
        rows.append(
            f'<tr data-scenario="{_e(r["name"])}"><td>{_e(r["config"]["balance"])}</td>'
            + "".join(
                _num(
                    sh,
                    f"{sh:.1f} %" + (f" · {fmt_ms(by_addr[ip]['total'])}" if ip in by_addr else ""),
                    "share",
                )
                for sh, ip in zip(share, addresses, strict=True)
            )
            + _num(ratio, f"{ratio:.2f}\u00d7", "imbalance")
            + _num(None, f"{max(over_time):.2f}\u00d7" if over_time else DASH)
            + _num(None, fmt_ms(r["latency_ms"]["p50"]))
            + _num(None, fmt_ms(r["latency_ms"]["p99"]))
            + _num(None, f"{round(r['throughput_rps']):,} req/s")
            + "</tr>"
        )
    chart = svg.hbar_chart(
        "balance-share",
        "Share of requests per address, by policy",
        addresses,
        [
            (policy, ADDRESS_COLORS[i % len(ADDRESS_COLORS)], [s[a] for a in range(len(addresses))])
            for i, (policy, s) in enumerate(zip(policies, shares, strict=True))
        ],
        x_label="share of the scenario's requests (%)",
        y_label="address",
        x_fmt=lambda v: f"{v:.3g} %",
        caption="An even spread is 25 % each.",
    )
    series = []
    dashes = (None, "6 3", "2 2")
    for i, r in enumerate(runs):
        bt = r.get("balance_time") or {}
        pts = [(t, v) for t, v in zip(bt.get("t_s", []), bt.get("imbalance", []), strict=True) if v]
        if pts:
            series.append(
                Series(
                    r["config"]["balance"],
                    ADDRESS_COLORS[i % len(ADDRESS_COLORS)],
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    dash=dashes[i % 3],
                )
            )
    charts = [chart]
    if series:
        charts.append(
            svg.line_chart(
                "balance-time",
                "Imbalance over time, by policy",
                series,
                x_label="time since the scenario started (s)",
                y_label="busiest / least busy address (ratio)",
                y_fmt=lambda v: f"{v:.3g}\u00d7",
                caption="Requests per address in 10 slices of each run: the busiest "
                "address's count over the least busy one's (1\u00d7 is even).",
            )
        )
    head = (
        "<tr><th>Policy</th>"
        + "".join(f"<th class=num>{_e(ip)}</th>" for ip in addresses)
        + "<th class=num>Imbalance (max/min)</th><th class=num>Worst slice</th>"
        "<th class=num>p50</th><th class=num>p99</th><th class=num>Throughput</th></tr>"
    )
    first = runs[0]["description"]
    rest = first.split(" chooses among ", 1)[-1] if " chooses among " in first else first
    desc = "The same load under each Config.balance policy, side by side: " + rest
    return (
        '<section id="balance"><h2>Balancing policies compared</h2>'
        f"<p>{_e(desc)}</p>"
        f'<div class="charts">{"".join(charts)}</div>'
        f'<div class="wide-table"><table class="balance" id="balance-table"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="sub">Each address cell: its share of the requests, and the mean time of a '
        "request there. Imbalance: the busiest address's requests over the least busy one's "
        "(1.00\u00d7 is even); worst slice: the same in the most uneven of 10 slices of the "
        "run.</p></section>"
    )


# ----------------------------------------------------------------------------
# Timeline and traces

TIMELINE_PREFERENCE = ("churn", "balance-least-connections", "address-down", "tls")


def _timeline_section(results: dict[str, Any]) -> str:
    scenarios = [r for r in results.get("scenarios", []) if r.get("timeline")]
    if not scenarios:
        return ""
    by_name = {r["name"]: r for r in scenarios}
    chosen = next((by_name[n] for n in TIMELINE_PREFERENCE if n in by_name), scenarios[0])
    links = ""
    trace_dir = results.get("trace_dir")
    files = [(r["name"], r["trace_file"]) for r in results["scenarios"] if r.get("trace_file")]
    if files and trace_dir is not None:
        items = "".join(
            f'<li><a class="trace-link" href="{_e(_href(trace_dir, f))}">{_e(name)}</a></li>'
            for name, f in files
        )
        links = (
            "<h3>Traces</h3><p>Each scenario's trace in Chrome's Trace Event Format: open it in "
            "Perfetto (ui.perfetto.dev, <i>Open trace file</i>) or chrome://tracing. Addresses "
            "are processes, connections spans on their lanes; the client's event loop has the "
            "probe's lag as a counter, garbage collections and the sampler's runs; the slowest "
            f"requests have a process of their own.</p><ul class=traces>{items}</ul>"
        )
    else:
        links = (
            '<p class="sub">Run with <code>--trace DIR</code> to write each scenario\'s '
            "Chrome/Perfetto trace; this report then links them here.</p>"
        )
    return (
        '<section id="timeline-section"><h2>Timeline</h2>'
        + interactive_timeline(chosen)
        + links
        + "</section>"
    )


def _href(trace_dir: str, name: str) -> str:
    from urllib.parse import quote

    path = name if trace_dir in ("", ".") else f"{trace_dir.rstrip('/')}/{name}"
    return quote(path)


# ----------------------------------------------------------------------------
# The fleet


def _fleet(r: dict[str, Any]) -> str:
    """The fleet scenario's own part: the server's connections against the
    budget, each process's work, the budget's stats and the Redis calls."""
    f = r.get("fleet")
    if not f:
        return ""
    limit = f["limit"]
    srv = f["server"]
    over = srv["max"] > limit
    chart = svg.line_chart(
        f"fleet-server-{r['name']}",
        "Connections the echo server had open at once, against the budget",
        [
            Series(
                "most at once in each interval", OKABE_ITO["vermillion"], srv["t_s"], srv["peak"]
            ),
            Series("open at the sample", OKABE_ITO["blue"], srv["t_s"], srv["open"], dash="4 3"),
            Series(
                f"budget ({limit})",
                OKABE_ITO["black"],
                [0.0, max(srv["t_s"], default=0.0)],
                [limit, limit],
                dash="8 4",
            ),
        ],
        x_label="time since the fleet started (s)",
        y_label="concurrent connections at the server",
        caption="The server counts every accept and close; the red line is the most it had "
        "open at once in each sampling interval, so no peak between samples is missed.",
    )
    procs = f["per_process"]
    rps_chart = svg.line_chart(
        f"fleet-rps-{r['name']}",
        "Throughput per process",
        [
            Series(
                f"process {p['index']}",
                ADDRESS_COLORS[i % len(ADDRESS_COLORS)],
                f["bucket_s"],
                p["rps"],
                dash=(None, "6 3", "2 2")[i % 3],
            )
            for i, p in enumerate(procs)
        ],
        x_label="time since the fleet started (s)",
        y_label="completed requests (req/s)",
        y_fmt=fmt_rate,
    )
    fair = 1 / len(procs) if procs else 0.0
    rows = "".join(
        f'<tr data-process="{p["index"]}"><td>process {p["index"]} (pid {p["pid"]})</td>'
        + _num(p["requests"], f"{p['requests']:,}", "requests")
        + _num(p["throughput_rps"], f"{round(p['throughput_rps']):,} req/s")
        + _num(p["share"], f"{p['share'] * 100:.1f} %", "share")
        + _num(p["latency_ms"]["p50"], fmt_ms(p["latency_ms"]["p50"]))
        + _num(p["latency_ms"]["p99"], fmt_ms(p["latency_ms"]["p99"]))
        + _num(p["created"], f"{p['created']:,}")
        + _num(p["max_open"], f"{p['max_open']:,}")
        + "".join(
            _num(p["budget"].get(k, 0), f"{p['budget'].get(k, 0):,}", f"budget.{k}")
            for k in ("granted", "waited", "denied", "given_back")
        )
        + _num(p["errors"], f"{p['errors']:,}", "errors")
        + "</tr>"
        for p in procs
    )
    b = f["budget"]
    calls = f["redis_calls"]
    calls_text = (
        ", ".join(f"{k.upper()} {v:,}" for k, v in calls.items()) if calls else "not readable"
    )
    dials = b.get("granted", 0)
    per_dial = f"; {calls.get('evalsha', 0) / dials:.2f} EVALSHA per granted dial" if dials else ""
    stats = _kv_table(
        [
            ("granted", f"{b.get('granted', 0):,} leases (one per dial)"),
            ("waited", f"{b.get('waited', 0):,} dials waited for the fleet"),
            ("denied", f"{b.get('denied', 0):,}"),
            ("timeouts", f"{b.get('timeouts', 0):,}"),
            ("given back", f"{b.get('given_back', 0):,} connections closed for a fair share"),
            ("renewed", f"{b.get('renewed', 0):,} lease renewals"),
            ("lost", f"{b.get('lost', 0):,}"),
            ("unaccounted", f"{b.get('unaccounted', 0):,}"),
            ("Redis errors", f"{b.get('redis_errors', 0):,}"),
            (
                "Redis calls",
                f"{sum(calls.values()):,} round trips ({calls_text}){per_dial}; the "
                f"budget's script ran {f.get('script_commands', 0):,} commands inside them",
            ),
            ("Redis", f"{f['redis']}, namespace {f['namespace']}"),
        ],
        "fleet-budget",
    )
    verdict = (
        f'<p class="note bad fleet-verdict">The server saw <b>{srv["max"]}</b> connections at '
        f"once, more than the budget of {limit}.</p>"
        if over
        else f'<p class="fleet-verdict">The server saw at most <b>{srv["max"]}</b> connections '
        f"at once: never more than the budget of {limit}, while the processes' own limits "
        f"would allow {f['processes'] * f['per_process_limit']}.</p>"
    )
    means = (r.get("breakdown") or {}).get("mean_ms") or {}
    mean_budget, mean_pool = _mean(means, "budget"), _mean(means, "pool")
    return (
        f'<div class="fleet" id="fleet-{_e(r["name"])}"><h3>The fleet</h3>{verdict}'
        f"<p>{f['processes']} processes ({_e(f['backend'])}), {f['clients_per_process']} client "
        f"tasks and a pool of at most {f['per_process_limit']} connections each; fairness "
        f"(least share over largest): {f['fairness']:.2f} (an even share is "
        f"{fair * 100:.1f} % each). Waiting for the budget took {fmt_ms(mean_budget)} of a "
        "request on average (its own part in <i>Where the time goes</i>: the Redis round "
        "trip of each dial and the waits while the fleet was at its limit). A dial that "
        "queued behind another dial of its process waiting for the fleet (the budget tries "
        "one dial per endpoint at a time) and then took a connection that came back idle "
        "emits no budget event: that wait is in the pool's own work, "
        f"{fmt_ms(mean_pool)} of a request on average here.</p>"
        f'<div class="charts">{chart}{rps_chart}</div>'
        '<div class="wide-table"><table class="fleet-processes"><thead><tr><th>Process</th>'
        "<th class=num>Requests</th><th class=num>Throughput</th><th class=num>Share</th>"
        "<th class=num>p50</th><th class=num>p99</th><th class=num>Connections made</th>"
        "<th class=num>Most open</th><th class=num>Budget granted</th>"
        "<th class=num>Waited</th><th class=num>Denied</th><th class=num>Given back</th>"
        f"<th class=num>Errors</th></tr></thead><tbody>{rows}</tbody></table></div>"
        f"<h4>Budget, every process summed</h4>{stats}</div>"
    )
