"""``conpool stress``: the command, its report in a real browser, and its parts.

The full ``--quick`` run happens once per session (module-scoped fixture, in a
child process like a user's shell would run it); the other tests read its
report and results.  Against real servers the run is shorter and limited to a
few scenarios.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import conpool
from conpool.stress import cli, report, runner, scenarios, svg
from conpool.stress.proxy import LatencyProxy
from conpool.stress.servers import STRESS_ADDRESSES
from servers import NginxServer, RedisServer, need, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _run_cli(*args: str, timeout: float = 50.0) -> subprocess.CompletedProcess[str]:
    """``python -m conpool ARGS`` in a child process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "conpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@dataclass
class QuickRun:
    html_path: Path
    json_path: Path
    results: dict[str, Any]
    html: str
    elapsed: float
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One ``conpool stress --quick`` with the embedded servers (every scenario)."""
    out = tmp_path_factory.mktemp("stress")
    html_path, json_path = out / "report.html", out / "results.json"
    start = time.monotonic()
    proc = _run_cli(
        "stress", "--quick", "--out", str(html_path), "--json", str(json_path), timeout=55
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return QuickRun(
        html_path=html_path,
        json_path=json_path,
        results=json.loads(json_path.read_text()),
        html=html_path.read_text(),
        elapsed=elapsed,
        stdout=proc.stdout,
        stderr=proc.stderr,
    )


def _by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in results["scenarios"]}


# ----------------------------------------------------------------------------
# The --quick run


def test_quick_run_runs_every_scenario_in_time(quick: QuickRun) -> None:
    # (The fleet scenario is skipped, with its reason, where there is no redis-server.)
    skipped = {s["name"] for s in quick.results["skipped"]}
    assert skipped <= {"fleet"}, quick.results["skipped"]
    names = [s.name for s in scenarios.all_scenarios(cli.QUICK_DURATION) if s.name not in skipped]
    assert [s["name"] for s in quick.results["scenarios"]] == names
    assert quick.results["interrupted"] is False
    # (The fleet scenario starts its processes and a redis-server: a few seconds more.)
    assert quick.elapsed < (15.0 if skipped else 22.0), f"--quick took {quick.elapsed:.1f} s"
    for s in quick.results["scenarios"]:
        assert s["requests"]["ok"] > 0, s["name"]
        assert s["duration_s"] == cli.QUICK_DURATION
        assert s["elapsed_s"] < cli.QUICK_DURATION + 1.0, s["name"]
        # Every connection the trace saw open, it saw closed (the pool closed them all).
        assert s["connections"]["created"] == s["connections"]["closed"], s["name"]
        assert s["trace"]["dropped"] == 0
        # The trace and pool.stats() tell the same story.
        assert s["pool_stats"]["created"] == s["connections"]["created"], s["name"]
        assert s["pool_stats"]["reused"] == s["connections"]["reused"], s["name"]
        # What the server saw agrees with the pool.  (When an address goes
        # down, a connect the kernel completed may never be accepted.)
        accepted = sum(s["server"]["accepted"].values())
        if s["name"] == "address-down":
            assert 0 <= s["connections"]["created"] - accepted <= 16
        else:
            assert accepted == s["connections"]["created"], s["name"]
    # The terminal got the summary table.
    assert "server-idle-close" in quick.stdout
    assert "report written to" in quick.stderr


def test_quick_run_scenarios_behave(quick: QuickRun) -> None:
    by = _by_name(quick.results)
    for name in ("limit-1", "limit-4", "limit-16", "limit-64"):
        limit = int(name.split("-")[1])
        r = by[name]
        assert r["errors"] == [], name
        # Never more connections than the limit, at any sample.
        series = list(r["timeseries"]["addresses"].values())
        open_now = [
            [a + i + p for a, i, p in zip(s["active"], s["idle"], s["pending"], strict=True)]
            for s in series
        ]
        totals = [sum(column) for column in zip(*open_now, strict=True)]
        assert 0 < max(totals) <= limit
        assert r["connections"]["created"] == limit
    assert by["limit-1"]["connections"]["acquire_queued"] > 0
    # Churn: connections retire by uses and by idle time.
    reasons = by["churn"]["connections"]["close_reasons"]
    assert reasons.get("uses", 0) > 0 and reasons.get("idle", 0) > 0
    # The slow address serves the smallest share.
    per = by["slow-address"]["connections"]["per_address"]
    assert min(per, key=lambda ip: per[ip]["handouts"]) == scenarios.SLOW_ADDRESS
    assert by["slow-address"]["latency_ms"]["max"] >= scenarios.SLOW_DELAY * 1000
    # The server's idle closes are noticed as stale, not handed out.
    idle = by["server-idle-close"]
    assert idle["connections"]["close_reasons"].get("stale", 0) > 0
    assert idle["requests"]["errors"] <= max(1, idle["requests"]["ok"] // 100)
    assert by["tls"]["tls"] is True and by["tls"]["errors"] == []


def test_quick_run_address_down_and_back(quick: QuickRun) -> None:
    r = _by_name(quick.results)["address-down"]
    down = scenarios.DOWN_ADDRESS
    labels = [m["label"] for m in r["markers"]]
    assert labels == [f"{down} down", f"{down} back up"]
    t_down, t_up = (m["t_s"] for m in r["markers"])
    # Refused connects to the downed address were retried elsewhere...
    assert any(f["address"] == down for f in r["connect_failures"])
    # ...most requests succeeded throughout...
    assert r["requests"]["ok"] > 20 * max(1, r["requests"]["errors"])
    # ...no connection to it was opened while it was down...
    opened = [lt for lt in r["lifetimes"] if lt[1] == down]
    assert not [lt for lt in opened if t_down + 0.01 < lt[2] < t_up - 0.01]
    # ...and traffic came back to it.
    assert [lt for lt in opened if lt[2] > t_up]
    for group in r["errors"]:
        assert group["first_s"] >= t_down - 0.05, group


# ----------------------------------------------------------------------------
# The report's numbers are the results' numbers


class _Cells(HTMLParser):
    """Collects every table cell that carries ``data-field``, with its text,
    keyed by the scenario of its row or section."""

    def __init__(self) -> None:
        super().__init__()
        self.scenario: str | None = None
        self.field: tuple[str, str | None] | None = None
        self.text = ""
        self.cells: dict[tuple[str, str], tuple[str | None, str]] = {}
        self.section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-scenario"):
            self.scenario = a["data-scenario"]
        if tag == "section" and a.get("data-scenario"):
            self.section = a["data-scenario"]
        if tag == "td" and a.get("data-field"):
            field = a["data-field"]
            assert field is not None
            self.field = (field, a.get("data-value"))
            self.text = ""

    def handle_data(self, data: str) -> None:
        if self.field is not None:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.field is not None:
            where = self.section or self.scenario
            assert where is not None
            prefix = "section:" if self.section else "summary:"
            self.cells[(prefix + where, self.field[0])] = (self.field[1], self.text.strip())
            self.field = None
        if tag == "table" and self.section is None:
            self.scenario = None
        if tag == "section":
            self.section = None


def _parse_quantity(text: str) -> float | None:
    """``"1,234 req/s"`` -> 1234, ``"850 µs"`` -> 0.85 (ms), ``"1.2 s"`` -> 1200 (ms)."""
    if text == "\u2013":
        return None
    match = re.fullmatch(r"([\d,.]+)\s*(µs|ms|s|req/s)?", text)
    assert match, text
    value = float(match[1].replace(",", ""))
    unit = match[2]
    return value / 1000 if unit == "µs" else value * 1000 if unit == "s" else value


def _close(shown: float | None, exact: float | None) -> bool:
    # Three significant digits on screen, integers with thousands separators.
    if shown is None or exact is None:
        return shown is exact
    return abs(shown - exact) <= max(abs(exact) * 0.006, 0.51 if exact >= 100 else 0.0006)


def test_report_numbers_match_results(quick: QuickRun) -> None:
    parser = _Cells()
    parser.feed(quick.html)
    keys = {
        "requests": ("requests", "ok"),
        "throughput_rps": ("throughput_rps",),
        "p50": ("latency_ms", "p50"),
        "p90": ("latency_ms", "p90"),
        "p99": ("latency_ms", "p99"),
        "max": ("latency_ms", "max"),
        "acquire_p99": ("acquire_ms", "p99"),
        "created": ("connections", "created"),
        "reused": ("connections", "reused"),
        "errors": ("requests", "errors"),
    }
    checked = 0
    for s in quick.results["scenarios"]:
        for field, path in keys.items():
            value: Any = s
            for key in path:
                value = value[key]
            raw, text = parser.cells[("summary:" + s["name"], field)]
            assert raw is not None and float(raw) == pytest.approx(value), (s["name"], field)
            assert _close(_parse_quantity(text), value), (s["name"], field, text, value)
            checked += 1
        for kind in ("latency_ms", "acquire_ms", "connect_ms"):
            for p in ("min", "p50", "p90", "p99", "max"):
                raw, text = parser.cells[("section:" + s["name"], f"{kind}.{p}")]
                assert _close(_parse_quantity(text), s[kind][p]), (s["name"], kind, p, text)
                checked += 1
    assert checked == len(quick.results["scenarios"]) * (len(keys) + 15)


def test_render_from_saved_results_gives_the_same_report(quick: QuickRun, tmp_path: Path) -> None:
    out = tmp_path / "again.html"
    proc = _run_cli("stress", "--render", str(quick.json_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == quick.html


def _check_self_contained(run: QuickRun) -> list[str]:
    """The report's links to files (the --trace files), after checking that it
    loads nothing: inline script only (the timeline's zoom), no stylesheet,
    image or font from anywhere, links only to anchors or to files next to it."""
    html = run.html
    assert html.count("<script>") == html.count("<script") == 1
    assert not re.search(r"""\b(src|srcset)\s*=""", html)
    assert not re.search(r"@import|url\((?!#)", html)
    files = []
    for href in re.findall(r'href="([^"]*)"', html):
        if href.startswith("#") or href == "data:,":
            continue
        assert "://" not in href and not href.startswith("/"), href
        assert (run.html_path.parent / href).is_file(), href
        files.append(href)
    return files


def test_report_is_self_contained(quick: QuickRun) -> None:
    assert _check_self_contained(quick) == []
    assert "Run with <code>--trace DIR</code>" in quick.html


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """A short run with --trace (three scenarios)."""
    out = tmp_path_factory.mktemp("traced")
    html_path, json_path = out / "report.html", out / "results.json"
    start = time.monotonic()
    proc = _run_cli(
        "stress", "--duration", "0.3", "--scenarios", "churn,slow-address,address-down",
        "--out", str(html_path), "--json", str(json_path), "--trace", str(out / "traces"),
        timeout=55,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return QuickRun(
        html_path=html_path,
        json_path=json_path,
        results=json.loads(json_path.read_text()),
        html=html_path.read_text(),
        elapsed=time.monotonic() - start,
        stdout=proc.stdout,
        stderr=proc.stderr,
    )


def test_report_links_the_trace_files(traced: QuickRun) -> None:
    names = [s["name"] for s in traced.results["scenarios"]]
    assert names == ["churn", "address-down", "slow-address"]
    assert sorted(_check_self_contained(traced)) == sorted(
        f"traces/{name}.trace.json" for name in names
    )
    assert all(s["trace_file"] == f"{s['name']}.trace.json" for s in traced.results["scenarios"])


# ----------------------------------------------------------------------------
# The report in a real browser


def _chromium() -> str:
    return need("chromium", "the stress report is checked in a real headless Chromium")


def test_report_in_headless_chromium(
    quick: QuickRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    shots = tmp_path_factory.mktemp("screenshots")
    url = quick.html_path.as_uri()
    requests: list[str] = []
    console: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda req: requests.append(req.url))
            page.on(
                "console",
                lambda msg: (
                    console.append(f"{msg.type}: {msg.text}")
                    if msg.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(url)
            page.wait_for_load_state("load")
            charts: list[dict[str, Any]] = page.evaluate(
                """() => [...document.querySelectorAll('svg.chart')].map(svg => {
                    const marks = [...svg.querySelectorAll('.mark')];
                    return {
                        id: svg.id,
                        kind: svg.dataset.kind,
                        points: Number(svg.dataset.points),
                        drawn: marks.reduce((n, m) => n + Number(m.dataset.count), 0),
                        marks: marks.length,
                        empty: marks.filter(m => {
                            const b = m.getBBox();
                            return !(b.width > 0 || b.height > 0);
                        }).length,
                        polylinePoints: [...svg.querySelectorAll('polyline.mark')].map(
                            l => [l.points.numberOfItems, Number(l.dataset.count)]),
                        legend: svg.querySelectorAll('.legend text').length,
                        labels: svg.querySelectorAll('text.label').length,
                        width: svg.getBoundingClientRect().width,
                    };
                })"""
            )
            page.screenshot(path=str(shots / "report-top.png"))
            page.locator("#s-address-down").screenshot(path=str(shots / "address-down.png"))
        finally:
            browser.close()
    assert requests == [url], "the report must not request anything but itself"
    assert console == [] and page_errors == []
    scenarios_run = len(quick.results["scenarios"])
    # Four comparison charts, and at least four charts per scenario.
    assert len(charts) >= 4 + 4 * scenarios_run
    for chart in charts:
        assert chart["points"] > 0, chart
        assert chart["drawn"] == chart["points"], chart
        assert chart["empty"] == 0, chart
        for n, count in chart["polylinePoints"]:
            assert n == count, chart
        assert chart["legend"] >= 1, chart
        assert chart["labels"] >= 2, chart  # an x and a y axis title
        assert chart["width"] > 300, chart
    print(f"report screenshots in {shots}")


def test_report_prints(quick: QuickRun, tmp_path: Path) -> None:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(quick.html_path.as_uri())
            page.emulate_media(media="print")
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            pdf = page.pdf(path=str(tmp_path / "report.pdf"), landscape=True)
        finally:
            browser.close()
    assert overflow <= 0
    assert pdf.startswith(b"%PDF") and len(pdf) > 10000


# ----------------------------------------------------------------------------
# Against real servers


@pytest.mark.realserver
def test_target_nginx(nginx: NginxServer, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = _run_cli(
        "stress",
        "--target", f"127.0.0.1:{nginx.port}",
        "--protocol", "http",
        "--backend", "uvloop",
        "--duration", "0.3",
        "--concurrency", "16",
        "--scenarios", "limit-4,balance-round-robin,churn,slow-address",
        "--out", str(tmp_path / "report.html"),
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["environment"]["backend"] == "uvloop"
    assert "uvloop" in results["environment"]["event_loop"]
    names = [s["name"] for s in results["scenarios"]]
    assert names == ["limit-4", "balance-round-robin", "churn", "slow-address"]
    ok = sum(s["requests"]["ok"] for s in results["scenarios"])
    created = sum(s["connections"]["created"] for s in results["scenarios"])
    for s in results["scenarios"]:
        assert s["requests"]["errors"] == 0, s["errors"]
        assert s["requests"]["ok"] > 0
    # nginx answered every request the report counts, over the connections it counts.
    lines = nginx.wait_for_log(ok)
    assert len(lines) == ok
    assert len({line.conn for line in lines}) == created
    assert any(line.req > 1 for line in lines)  # keep-alive reuse, seen by nginx
    assert results["skipped"] == []  # only the chosen scenarios were asked for


def _redis_info(server: RedisServer) -> dict[str, str]:
    """``INFO stats`` over a connection of its own (a bulk string: ``$len\\r\\n...``)."""
    with socket.create_connection(server.address, timeout=2) as sock:
        sock.sendall(b"INFO stats\r\n")
        data = b""
        while True:
            header, sep, body = data.partition(b"\r\n")
            if sep and len(body) >= int(header[1:]):
                break
            chunk = sock.recv(65536)
            assert chunk, "redis closed the connection"
            data += chunk
    info = {}
    for line in body.decode().splitlines():
        key, colon, value = line.partition(":")
        if colon:
            info[key] = value
    return info


@pytest.mark.realserver
def test_target_redis(redis: RedisServer, tmp_path: Path) -> None:
    before = _redis_info(redis)
    out = tmp_path / "results.json"
    proc = _run_cli(
        "stress",
        "--target", f"127.0.0.1:{redis.port}",
        "--protocol", "redis",
        "--backend", "trio",
        "--duration", "0.3",
        "--concurrency", "16",
        "--scenarios", "limit-1,limit-16,*power*",
        "--out", str(tmp_path / "report.html"),
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    after = _redis_info(redis)
    results = json.loads(out.read_text())
    assert results["environment"]["async_library"] == "trio"
    assert [s["name"] for s in results["scenarios"]] == [
        "limit-1",
        "limit-16",
        "balance-power-of-two",
    ]
    ok = sum(s["requests"]["ok"] for s in results["scenarios"])
    created = sum(s["connections"]["created"] for s in results["scenarios"])
    assert all(s["requests"]["errors"] == 0 for s in results["scenarios"])
    assert all(s["protocol"] == "redis" for s in results["scenarios"])
    # One PING per request, one connection per connection created (plus the
    # CLI's preflight connect and our INFO connection).
    commands = int(after["total_commands_processed"]) - int(before["total_commands_processed"])
    connections = int(after["total_connections_received"]) - int(
        before["total_connections_received"]
    )
    assert commands == ok + 1  # + the INFO above
    assert connections == created + 2


def test_target_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        port = sock.getsockname()[1]
        proc = _run_cli(
            "stress", "--target", f"127.0.0.1:{port}", "--quick",
            "--out", str(tmp_path / "r.html"),
        )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot connect to --target" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_writes_the_report_of_what_finished(backend: str, tmp_path: Path) -> None:
    html, out = tmp_path / "report.html", tmp_path / "results.json"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "conpool", "stress",
            "--backend", backend,
            "--duration", "0.4",
            "--scenarios", "limit-*",
            "--out", str(html),
            "--json", str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        seen = ""
        while "finished limit-1" not in seen:
            assert time.monotonic() < deadline, seen
            line = proc.stderr.readline()
            assert line, f"exited early: {proc.wait()}"
            seen += line
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    results = json.loads(out.read_text())
    assert results["interrupted"] is True
    finished = [s["name"] for s in results["scenarios"]]
    assert finished and finished == ["limit-1", "limit-4", "limit-16", "limit-64"][: len(finished)]
    assert len(finished) < 4
    assert "interrupted" in html.read_text()
    assert "limit-1" in stdout  # the summary table of what finished


# ----------------------------------------------------------------------------
# Usage errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--duration", "0"], "--duration: must be > 0"),
        (["--duration", "soon"], "not a number of seconds"),
        (["--concurrency", "0"], "between 1 and 10000"),
        (["--concurrency", "many"], "not a whole number"),
        (["--scenarios", "nope"], "no scenario matches 'nope'"),
        (["--scenarios", ","], "--scenarios needs at least one name"),
        (["--backend", "tokio"], "invalid choice: 'tokio'"),
        (["--target", "localhost"], "--target: expected HOST:PORT"),
        (["--target", "localhost:99999"], "--target: expected HOST:PORT"),
        (["--target", "127.0.0.1:80", "--protocol", "smtp"], "invalid choice: 'smtp'"),
        (["--protocol", "redis"], "--protocol only applies with --target"),
        (["--target", "127.0.0.1:80", "--scenarios", "tls"], "needs the embedded servers"),
        (["--target", "127.0.0.1:80", "--scenarios", "limit-1,x*"], "no scenario matches 'x*'"),
        (["--out", "/nonexistent/dir/r.html"], "does not exist"),
        (["--json", "/"], "is a directory"),
        (["--render", "/nonexistent.json"], "--render"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: conpool stress" in err
    assert message in err
    assert "Traceback" not in err


def test_bad_options_exit_2_from_the_console_script() -> None:
    proc = _run_cli("stress", "--concurrency", "-3")
    assert proc.returncode == 2
    assert "error: argument --concurrency" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run_cli()
    assert proc.returncode == 2
    assert "a command is required" in proc.stderr
    proc = _run_cli("strss")
    assert proc.returncode == 2
    assert "unknown command 'strss'" in proc.stderr


def test_target_plan_skips_what_needs_the_embedded_servers() -> None:
    args = cli.build_parser().parse_args(["--target", "127.0.0.1:6379", "--protocol", "redis"])
    chosen, skipped, target = cli._plan(args, 1.0)
    assert target == runner.Target("127.0.0.1", 6379, "redis")
    embedded = {"address-down", "tls", "server-idle-close", "fleet", "http", "httpx"}
    assert {s["name"] for s in skipped} == embedded
    assert {s.name for s in chosen}.isdisjoint(embedded)
    assert "slow-address" in {s.name for s in chosen}


def test_help_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--duration", "--concurrency", "--scenarios", "--out", "--json"):
        assert option in text
    for option in ("--backend", "--target", "--protocol"):
        assert option in text
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for s in scenarios.all_scenarios(1.0):
        assert s.name in listed


# ----------------------------------------------------------------------------
# The parts


def test_percentiles_nearest_rank() -> None:
    values = list(range(1, 101))
    p = runner.percentiles([float(v) for v in values])
    assert (p["min"], p["p50"], p["p90"], p["p99"], p["max"]) == (1, 50, 90, 99, 100)
    assert p["mean"] == pytest.approx(50.5)
    assert runner.percentiles([])["p50"] is None
    assert runner.percentiles([3.0])["p99"] == 3.0


def test_log_histogram_counts_everything() -> None:
    lat = [0.1, 0.5, 1.0, 2.0, 40.0]
    acq = [0.0, 0.0005, 0.3]
    h = runner.log_histogram({"latency": lat, "acquire": acq})
    assert len(h["edges"]) == len(h["latency"]) + 1 == len(h["acquire"]) + 1
    assert sum(h["latency"]) == len(lat) and sum(h["acquire"]) == len(acq)
    assert h["edges"][0] <= 0.001 and h["edges"][-1] >= 40.0
    assert h["acquire"][0] == 2  # zero and sub-microsecond waits land in the first bin
    assert runner.log_histogram({"x": []}) == {"edges": [], "x": []}


def test_error_text_has_the_causes() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except OSError as exc:
            raise conpool.ConnectError(
                "[Errno 104] Connection reset by peer",
                errors=[exc],
                context=["connecting to tcp:127.0.0.11:80", "connecting to stress.test:80"],
            ) from exc
    except conpool.ConnectError as exc:
        text = runner.error_text(exc)
    assert text.splitlines() == [
        "conpool.ConnectError: [Errno 104] Connection reset by peer",
        "  connecting to tcp:127.0.0.11:80",
        "  connecting to stress.test:80",
        "caused by ConnectionResetError: [Errno 104] Connection reset by peer",
    ]
    import anyio

    assert runner.error_text(anyio.EndOfStream()) == (
        "anyio.EndOfStream: the server closed the connection before answering"
    )


def test_trace_digest_lifetimes() -> None:
    t0 = 1_000_000_000
    ms = 1_000_000
    tracer = conpool.Tracer(capacity=16)
    tracer.emit("connect.complete", "e:1", "10.0.0.1", 1, duration_ns=2 * ms, ts_ns=t0 + 5 * ms)
    tracer.emit("connect.complete", "e:1", "10.0.0.2", 2, duration_ns=3 * ms, ts_ns=t0 + 6 * ms)
    tracer.emit("conn.release", "e:1", "10.0.0.1", 1, ts_ns=t0 + 7 * ms)
    tracer.emit("conn.close", "e:1", "10.0.0.1", 1, detail="uses", ts_ns=t0 + 9 * ms)
    tracer.emit("connect.failed", "e:1", "10.0.0.3", 0, detail="refused", ts_ns=t0 + 9 * ms)
    tracer.emit("address.eject", "e:1", "10.0.0.3", 0, detail="3 failures", ts_ns=t0 + 10 * ms)
    digest = runner.TraceDigest(t0)
    digest.drain(tracer)
    assert len(tracer) == 0  # drained
    digest.finish()
    assert digest.lifetimes == [
        [1, "10.0.0.1", 0.005, 0.009, "uses"],
        [2, "10.0.0.2", 0.006, None, "open"],
    ]
    assert digest.connect_ms == [2.0, 3.0]
    assert digest.handouts == {"10.0.0.1": 1}
    assert digest.failures == {("10.0.0.3", "refused"): 1}
    assert digest.address_events == [[0.01, "address.eject", "10.0.0.3", "3 failures"]]


def test_trace_digest_counts_dropped_events() -> None:
    tracer = conpool.Tracer(capacity=2)
    for i in range(5):
        tracer.emit("conn.release", "e:1", "10.0.0.1", i)
    digest = runner.TraceDigest(0)
    digest.drain(tracer)
    assert digest.dropped == 3 and digest.events == 2


def test_select_scenarios() -> None:
    everything = scenarios.all_scenarios(1.0)
    assert [s.name for s in scenarios.select(everything, ["limit-*"])] == [
        "limit-1",
        "limit-4",
        "limit-16",
        "limit-64",
    ]
    assert [s.name for s in scenarios.select(everything, ["tls", "limit-1"])] == [
        "limit-1",
        "tls",
    ]
    with pytest.raises(ValueError, match="no scenario matches 'x'"):
        scenarios.select(everything, ["x"])
    target = {s.name for s in scenarios.all_scenarios(1.0, target=True)}
    assert "tls" not in target and "address-down" not in target and "limit-1" in target
    assert all(s.embedded_only is False for s in scenarios.all_scenarios(1.0, target=True))


def test_formatting() -> None:
    assert svg.fmt_ms(0.85) == "850 µs"
    assert svg.fmt_ms(1.234) == "1.23 ms"
    assert svg.fmt_ms(12.0) == "12 ms"
    assert svg.fmt_ms(2500.0) == "2.5 s"
    assert svg.fmt_ms(None) == "\u2013"
    assert svg.fmt_count(950) == "950"
    assert svg.fmt_count(6458.35) == "6,458"
    assert svg.fmt_count(12345) == "12.3k"
    assert svg.nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert svg.nice_ticks(0, 1.0, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert svg.log_ticks(0.01, 100.0, pixels=300) == [0.01, 0.1, 1.0, 10.0, 100.0]


def _marks(fragment: str) -> int:
    return sum(int(n) for n in re.findall(r'class="mark" data-count="(\d+)"', fragment))


def _points(fragment: str) -> int:
    match = re.search(r'data-points="(\d+)"', fragment)
    assert match
    return int(match[1])


def test_charts_draw_every_point_and_label_their_axes() -> None:
    charts = [
        svg.line_chart(
            "a",
            "t",
            [svg.Series("one", "#000", [0, 1, 2], [1, 2, 3]), svg.Series("two", "#111", [1], [4])],
            x_label="time (s)",
            y_label="rate (req/s)",
            markers=[(1.0, "down")],
        ),
        svg.stacked_area_chart(
            "b",
            "t",
            [0, 1, 2],
            [("x", "#000", [1, 2, 3]), ("y", "#111", [0, 1, 0])],
            x_label="time (s)",
            y_label="connections (count)",
            overlay=svg.Series("in use", "#222", [0, 1, 2], [1, 1, 1]),
        ),
        svg.histogram_chart(
            "c",
            "t",
            [0.1, 1.0, 10.0],
            [("l", "#000", [3, 4]), ("a", "#111", [7, 0])],
            x_label="duration (ms)",
            y_label="requests (count)",
        ),
        svg.hbar_chart(
            "d",
            "t",
            ["p", "q"],
            [("v", "#000", [1.0, None]), ("w", "#111", [3.0, 4.0])],
            x_label="value (count)",
            y_label="scenario",
        ),
        svg.timeline_chart(
            "e",
            "t",
            [
                svg.Lane(
                    "10.0.0.1", [svg.Bar(0, 1, "uses", "#1"), svg.Bar(0.5, None, "open", "#2")]
                ),
                svg.Lane("10.0.0.2", [svg.Bar(0.2, 0.4, "error", "#3")]),
            ],
            x_domain=(0.0, 2.0),
            colors=svg.REASON_COLORS,
        ),
    ]
    expected = [4, 9, 4, 3, 3]
    for chart, n in zip(charts, expected, strict=True):
        assert _points(chart) == n
        assert _marks(chart) == n
        assert chart.count('class="label"') >= 2
        assert '<g class="legend">' in chart
        assert "<title" in chart and "<desc" in chart
    assert "closed: uses" in charts[4] and "still open" in charts[4]


def test_render_escapes_and_handles_no_scenario() -> None:
    page = report.render(
        {
            "started": "<now>",
            "options": {"scenarios": ["a"], "duration_s": 1, "concurrency": 2},
            "environment": {"conpool": "0.1.0", "platform": "<script>alert(1)</script>"},
            "scenarios": [],
            "interrupted": True,
        }
    )
    assert "No scenario finished" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "interrupted: 0 of 1 scenarios finished" in page


def test_latency_proxy_delays_answers() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]

            def data_received(self, data: bytes) -> None:
                self.transport.write(data)

        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        timings = []
        for delay in (0.0, 0.05):
            proxy = LatencyProxy("127.0.0.1", 0, "127.0.0.1", port, delay)
            await proxy.start()
            assert proxy._server is not None
            pport = proxy._server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", pport)
            start = time.monotonic()
            for i in range(3):
                writer.write(b"ping%d" % i)
                assert await reader.readexactly(5) == b"ping%d" % i
            timings.append((time.monotonic() - start) / 3)
            writer.close()
            await writer.wait_closed()
            proxy.close()
        server.close()
        await server.wait_closed()
        return timings[0], timings[1]

    fast, slow = asyncio.run(main())
    assert fast < 0.02
    assert 0.05 <= slow < 0.1


def test_servers_process_up_down_and_stop() -> None:
    from conpool.stress.servers import STRESS_ADDRESSES, ServerProcess, ServerSpec

    with ServerProcess(ServerSpec()) as servers:
        assert set(servers.ports) >= {"echo", "http", "http_idle", "slow"}
        ip = STRESS_ADDRESSES[1]
        with socket.create_connection((ip, servers.ports["echo"]), timeout=2) as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            servers.down(ip)
            try:  # its connections were reset...
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        with pytest.raises(ConnectionRefusedError):  # ...and it no longer listens
            socket.create_connection((ip, servers.ports["echo"]), timeout=2)
        servers.up(ip)
        with socket.create_connection((ip, servers.ports["http"]), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")
        status = servers.status()
        assert status["accepted"][f"echo {ip}"] == 1
        assert status["requests"][f"http {ip}"] == 1
        pid = servers.pid
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


# ----------------------------------------------------------------------------
# Where the time goes, the tail, the trace files, the timeline


def test_breakdown_adds_up_and_finds_the_injected_delay(quick: QuickRun) -> None:
    """slow-address: the proxy on one address holds every answer 20 ms.  The
    parts of each request add up to its measured time; the slow address's
    exchange (wire and the loop lag within it) is about 20 ms longer, nearly
    all of it on the wire, and the pool's own part does not move."""
    by = _by_name(quick.results)
    for r in quick.results["scenarios"]:
        b = r["breakdown"]
        assert b["requests"] == r["requests"]["ok"], r["name"]
        # Per request, exact (integers); the means to within rounding (1 ns).
        assert b["max_gap_ns"] == 0, r["name"]
        assert sum(b["mean_ms"].values()) == pytest.approx(b["total_ms"], abs=1e-4), r["name"]
        # The breakdown's total is the latency the summary reports.
        assert b["total_ms"] == pytest.approx(r["latency_ms"]["mean"], rel=1e-3, abs=1e-3)
        assert all(v >= 0 for v in b["mean_ms"].values()), r["name"]
    slow = by["slow-address"]["breakdown"]["by_address"]
    delayed = slow[scenarios.SLOW_ADDRESS]
    others = [v for ip, v in slow.items() if ip != scenarios.SLOW_ADDRESS]
    assert len(others) == 3

    def mean(key: str) -> float:
        return float(sum(v[key] for v in others)) / len(others)

    delay_ms = scenarios.SLOW_DELAY * 1000
    exchange = (delayed["wire"] + delayed["lag"]) - (mean("wire") + mean("lag"))
    assert delay_ms * 0.95 <= exchange <= delay_ms * 1.75, slow
    assert delayed["wire"] - mean("wire") >= delay_ms * 0.6, slow
    assert abs(delayed["pool"] - mean("pool")) < 0.5, slow  # ms
    # TLS shows as its own part, only where there is TLS.
    assert by["tls"]["breakdown"]["mean_ms"]["tls"] > 0
    assert by["plain"]["breakdown"]["mean_ms"]["tls"] == 0
    # With 64 clients and 1 connection, waiting is most of a request.
    limit1 = by["limit-1"]["breakdown"]
    assert limit1["mean_ms"]["wait"] > 0.5 * limit1["total_ms"]


def test_request_parts_from_known_timestamps() -> None:
    from conpool.stress import analysis, measure

    req = measure.Requests()
    ms = 1_000_000
    # start, got, xend, end; wait, resume, resolve, dial, tls
    rows = [
        (0, 10 * ms, 15 * ms, 15 * ms + 20_000, 6 * ms, ms, 0, 2 * ms, ms // 2),
        (ms, ms + 5_000, 4 * ms, 4 * ms + 7_000, 0, 0, 0, 0, 0),
    ]
    for start, got, xend, end, wait, resume, resolve, dial, tls in rows:
        for name, v in zip(
            ("start", "got", "xend", "end", "wait", "resume", "resolve", "dial", "tls"),
            (start, got, xend, end, wait, resume, resolve, dial, tls),
            strict=True,
        ):
            req.column(name).append(v)
        req.column("failures").append(0)
        req.column("budget").append(0)
        req.column("conn").append(1)
        req.column("addr").append(req.address_index("10.0.0.1"))
    probe = measure.LoopProbe(0)
    probe.at.extend([3 * ms, 16 * ms])
    probe.late.extend([0, 400_000])  # 0.4 ms late just after the first answer
    parts = analysis.request_parts(req, probe)
    assert parts["wait"] == [6 * ms, 0]
    assert parts["tls"] == [ms // 2, 0]
    assert parts["connect"] == [2 * ms - ms // 2, 0]
    assert parts["lag"] == [ms + 400_000, 400_000]
    assert parts["wire"] == [5 * ms - 400_000, 3 * ms - 5_000 - 400_000]
    assert parts["pool"] == [ms + 20_000, 5_000 + 7_000]
    for i in range(2):
        assert sum(parts[p][i] for p in analysis.PARTS) == parts["total"][i]


def test_tail_names_what_the_slowest_requests_share(quick: QuickRun) -> None:
    by = _by_name(quick.results)
    for r in quick.results["scenarios"]:
        t = r["tail"]
        assert 1 <= t["sample"] <= 50
        assert t["threshold_ms"] <= r["latency_ms"]["max"] + 1e-6
        assert len(t["requests"]) == t["sample"]
        totals = [q["total_ms"] for q in t["requests"]]
        assert totals == sorted(totals, reverse=True)
        assert totals[0] == pytest.approx(r["latency_ms"]["max"], abs=1e-3)
    # One address 20 ms slower: the slowest requests all went there.
    slow = by["slow-address"]["tail"]
    top = slow["factors"][0] if slow["factors"][0]["common"] else None
    assert any(
        f["factor"] == f"used address {scenarios.SLOW_ADDRESS}" and f["common"]
        for f in slow["factors"]
    ), slow["factors"]
    assert top is not None
    verdict = report._tail_sentence(by["slow-address"])
    assert f"used address {scenarios.SLOW_ADDRESS}" in verdict
    assert f"used address {scenarios.SLOW_ADDRESS}" in quick.html
    # Connections opened together retire together (by uses or lifetime):
    # waves, found in some scenario of the run and named in the report.
    waves = {r["name"]: r["waves"] for r in quick.results["scenarios"] if r["waves"]}
    assert waves, "no retirement wave in any scenario"
    for name, found in waves.items():
        assert all(w["reason"] in ("uses", "lifetime", "idle") and w["size"] >= 4 for w in found)
        assert (
            by[name]["config"]["max_connection_uses"]
            or by[name]["config"]["max_connection_lifetime"] < 300
            or by[name]["config"]["max_idle_time"] < 60
        ), name
    assert "Connection retirement waves" in quick.html


def test_cpu_is_measured(quick: QuickRun) -> None:
    for r in quick.results["scenarios"]:
        cpu = r["cpu"]
        assert cpu["wall_s"] > 0
        client = cpu["client"]
        assert 0 < client["cpu_s"] <= cpu["wall_s"] * (os.cpu_count() or 1) + 0.05
        assert client["runqueue_s"] >= 0
        assert cpu["server"] is not None and cpu["server"]["cpu_s"] >= 0
    assert 'id="breakdown"' in quick.html


def test_starved_client_is_flagged() -> None:
    r = {"cpu": {"wall_s": 1.0, "cpus": 2, "client": {"runqueue_s": 0.3, "runqueue_share": 0.3,
                                                      "cpu_s": 0.6},
                 "server": {"cpu_s": 0.2}, "machine": {"busy_s": 1.9, "total_s": 2.0}}}  # fmt: skip
    text = report._starved(r)
    assert text is not None and "300 ms of 1000 ms (30 %)" in text
    assert "other processes used 1.10 of the machine's 2 CPUs" in text
    r["cpu"]["client"]["runqueue_share"] = 0.01  # type: ignore[index]
    assert report._starved(r) is None


_PHASES = {"B", "E", "X", "i", "I", "C", "M", "b", "e", "n", "s", "t", "f"}


def test_trace_files_are_trace_event_format(traced: QuickRun) -> None:
    folder = traced.html_path.parent / "traces"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{s['name']}.trace.json" for s in traced.results["scenarios"])
    for path in folder.iterdir():
        data = json.loads(path.read_text())
        assert isinstance(data, dict) and isinstance(data["traceEvents"], list), path
        kinds: set[str] = set()
        for ev in data["traceEvents"]:
            assert ev["ph"] in _PHASES, ev
            assert isinstance(ev["name"], str) and ev["name"], ev
            assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int), ev
            if ev["ph"] != "M":
                assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0, ev
            if ev["ph"] == "X":
                assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
            if ev["ph"] == "C":
                assert all(isinstance(v, (int, float)) for v in ev["args"].values()), ev
            if ev["ph"] == "i":
                assert ev.get("s", "t") in ("g", "p", "t"), ev
            if ev["ph"] == "M":
                assert ev["name"] in ("process_name", "thread_name") and ev["args"]["name"]
            kinds.add(ev.get("cat", ev["name"]))
        # Connections, the loop probe and the slowest requests are all there.
        assert {"connection", "loop lag", "request"} <= kinds, (path, kinds)
    churn = json.loads((folder / "churn.trace.json").read_text())
    conns = [e for e in churn["traceEvents"] if e.get("cat") == "connection"]
    r = _by_name(traced.results)["churn"]
    assert len(conns) == r["connections"]["created"]


def test_timeline_in_headless_chromium(quick: QuickRun) -> None:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    r = _by_name(quick.results)["churn"]  # the timeline's first choice
    tl = r["timeline"]
    expected = len(tl["connections"]) + len(tl["connects"]) + len(tl["waits"])
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(quick.html_path.as_uri())
            page.wait_for_load_state("load")
            found = page.evaluate(
                """() => {
                    const svg = document.querySelector('svg.timeline');
                    const spans = [...svg.querySelectorAll('rect.span')];
                    return {
                        declared: Number(svg.dataset.spans),
                        spans: spans.length,
                        conns: svg.querySelectorAll('rect.span.conn').length,
                        connects: svg.querySelectorAll('rect.span.connect').length,
                        waits: svg.querySelectorAll('rect.span.wait').length,
                        closes: svg.querySelectorAll('line.close').length,
                        drawn: spans.filter(s => s.getBBox().width > 0).length,
                        ticks: svg.querySelectorAll('g.tl-ticks text').length,
                        zoom: svg.dataset.zoom,
                    };
                }"""
            )
            page.click("button[data-op=in]")
            page.click("button[data-op=in]")
            zoomed = page.evaluate(
                """() => {
                    const svg = document.querySelector('svg.timeline');
                    const t = [...svg.querySelectorAll('g.tl-ticks text')].map(e => e.textContent);
                    return {zoom: svg.dataset.zoom, first: t[0], last: t[t.length - 1]};
                }"""
            )
            page.locator("svg.timeline").hover()
            page.mouse.wheel(0, 300)  # zoom out again by wheel
            after_wheel = page.evaluate("() => document.querySelector('svg.timeline').dataset.zoom")
            page.click("button[data-op=reset]")
            reset = page.evaluate("() => document.querySelector('svg.timeline').dataset.zoom")
        finally:
            browser.close()
    assert problems == []
    assert found["declared"] == found["spans"] == found["drawn"] == expected
    assert found["conns"] == len(tl["connections"])
    assert found["connects"] == len(tl["connects"])
    assert found["waits"] == len(tl["waits"])
    assert found["closes"] >= 1 and found["ticks"] >= 3
    assert found["zoom"] == "1"  # the script ran
    assert zoomed["zoom"] == "4"
    assert float(after_wheel) < 4
    assert reset == "1"


def test_expected_failures_are_shown_as_expected(quick: QuickRun) -> None:
    results = json.loads(json.dumps(quick.results))
    down = _by_name(results)["address-down"]
    down["requests"]["errors"] = 4
    down["errors"] = [
        {"type": "anyio.BrokenResourceError", "message": "anyio.BrokenResourceError: reset",
         "count": 4, "first_s": 0.2, "last_s": 0.2, "traceback": ""}
    ]  # fmt: skip
    for r in results["scenarios"]:
        if r["name"] != "address-down":
            r["requests"]["errors"] = 0
            r["errors"] = []
    page = report.render(results)
    assert "4 expected failed requests (address-down: injected faults)" in page
    assert "no unexpected failed request" in page
    assert "unexpected failed requests</span>" not in page
    assert "4 failed requests, expected:" in page
    assert f"{scenarios.DOWN_ADDRESS} is taken down on purpose" in page
    # A failure anywhere else is still an alarm.
    _by_name(results)["plain"]["requests"]["errors"] = 2
    page = report.render(results)
    assert "2 unexpected failed requests" in page


def test_target_texts_and_skipped_listed_first(quick: QuickRun) -> None:
    target = scenarios.all_scenarios(1.0, target=True)
    by = {s.name: s for s in target}
    assert "the target: a single address" in by["limit-4"].description
    assert "four addresses" not in by["limit-4"].description
    assert "Echo" not in by["plain"].description
    assert "in front of the target" in by["balance-round-robin"].description
    assert "in front of the target" in by["slow-address"].description
    results = json.loads(json.dumps(quick.results))
    results["skipped"] = [{"name": "tls", "reason": "needs the embedded servers"}]
    page = report.render(results)
    assert page.index('id="skipped"') < page.index('id="summary"')
    assert "<b>tls</b>: needs the embedded servers" in page
    assert "1 scenario not run" in page


def test_config_values_have_units(quick: QuickRun) -> None:
    assert report._config_value("max_idle_time", 0.005) == "0.005 s (5 ms)"
    assert report._config_value("connect_timeout", 10.0) == "10 s"
    assert report._config_value("max_connections_per_endpoint", 16) == "16 connections"
    assert report._config_value("max_connection_uses", None) == "None (no limit)"
    assert report._config_value("lifetime_jitter", 0.1) == "0.1 (10 %)"
    assert report._config_value("balance", "round-robin") == "'round-robin'"
    assert "<td>0.005 s (5 ms)</td>" in quick.html  # churn's max_idle_time


def test_balancing_policies_differ(quick: QuickRun) -> None:
    by = _by_name(quick.results)
    shares = {}
    for policy in scenarios.POLICIES:
        r = by[f"balance-{policy}"]
        per = r["connections"]["per_address"]
        total = sum(v["handouts"] for v in per.values())
        shares[policy] = [per[ip]["handouts"] / total for ip in sorted(per)]
        assert len(per) == 4
    # The addresses are 0, 1, 2 and 4 ms slow: least-connections sends the
    # fastest one the most, round-robin spreads connections evenly.
    lc, rr = shares["least-connections"], shares["round-robin"]
    assert lc[0] > lc[3]
    assert max(lc) / min(lc) > max(rr) / min(rr)
    assert 'id="balance-share"' in quick.html and 'id="balance-table"' in quick.html


def test_histogram_series_do_not_mix_colours() -> None:
    chart = svg.histogram_chart(
        "h", "t", [0.1, 1.0, 10.0], [("a", "#111", [1, 2]), ("b", "#222", [2, 1])],
        x_label="duration (ms)", y_label="requests (count)",
    )  # fmt: skip
    paths = re.findall(r'<path class="mark"[^>]*>', chart)
    assert 'fill="#111"' in paths[0] and 'fill="none"' in paths[1]


def test_lifetime_chart_aggregates_many_connections() -> None:
    bars = [svg.Bar(0.0, 1.0, "pool-closed", f"#{i}") for i in range(64)]
    chart = svg.timeline_chart(
        "l", "t", [svg.Lane("10.0.0.1", bars)], x_domain=(0.0, 1.0), colors=svg.REASON_COLORS
    )
    assert _points(chart) == _marks(chart) == 64
    height = float(re.search(r'height="([\d.]+)" role="img"', chart)[1])  # type: ignore[index]
    assert height < 200  # 64 rows of bars would be 400 px and more
    assert "open connections, peak 64" in chart


def test_a_registered_scenario_with_its_own_driver_runs(tmp_path: Path) -> None:
    """The scenario list is pluggable: a provider adds a scenario whose driver
    never shows the runner the connection (as an HTTP client over the pool's
    transport would not); the breakdown then comes from the pool's hand-out
    and release events, and still adds up."""
    import contextlib
    from collections.abc import AsyncIterator

    import anyio

    from conpool.stress.measure import Slot
    from conpool.stress.protocols import Protocol
    from conpool.stress.servers import STRESS_ADDRESSES, ServerProcess, ServerSpec

    @contextlib.asynccontextmanager
    async def explicit(
        pool: conpool.Pool, endpoint: conpool.Endpoint, proto: Protocol
    ) -> AsyncIterator[runner.Request]:
        async def request(slot: Slot) -> tuple[str, int]:
            conn = await pool.acquire(endpoint)
            try:
                await proto.exchange(conn)
            finally:
                await pool.release(conn)
            return "", 0  # as an HTTP client would: the trace says which connection

        yield request

    def provider(duration: float, target: bool) -> list[scenarios.Scenario]:
        return [
            scenarios.Scenario(
                name="explicit-acquire",
                title="acquire and release by hand",
                group="plugin",
                description="a driver of its own",
                port="echo",
                protocol="echo",
                config={"max_connections_per_endpoint": 4},
                driver="explicit",
            )
        ]

    runner.DRIVERS["explicit"] = explicit
    scenarios.register(provider)
    try:
        chosen = scenarios.select(scenarios.all_scenarios(0.3), ["explicit-*"])
        assert [s.name for s in chosen] == ["explicit-acquire"]
        with pytest.raises(TypeError, match="must be callable"):
            scenarios.register(42)  # type: ignore[arg-type]
        with ServerProcess(ServerSpec()) as servers:

            async def main() -> dict[str, Any] | None:
                return await runner.run_scenario(
                    chosen[0],
                    duration=0.3,
                    concurrency=8,
                    servers=servers,
                    target=None,
                    control=runner.RunControl(),
                    trace_path=str(tmp_path / "x.trace.json"),
                )

            r = anyio.run(main)
    finally:
        scenarios._PROVIDERS.remove(provider)
        del runner.DRIVERS["explicit"]
    assert r is not None and r["requests"]["ok"] > 0 and r["errors"] == []
    assert sorted(r["breakdown"]["by_address"]) == sorted(STRESS_ADDRESSES)
    b = r["breakdown"]
    assert b["max_gap_ns"] == 0
    assert b["mean_ms"]["wire"] > 0 and b["mean_ms"]["wait"] > 0  # 8 clients, 4 connections
    assert json.loads((tmp_path / "x.trace.json").read_text())["traceEvents"]
    assert "explicit-acquire" not in scenarios.scenario_names()


def test_render_results_of_the_previous_schema(quick: QuickRun) -> None:
    old = json.loads(json.dumps(quick.results))
    old["schema"] = 1
    new_keys = ("expected_errors", "breakdown", "lag", "tail", "waves", "balance_time", "cpu",
                "timeline", "trace_file")  # fmt: skip
    for r in old["scenarios"]:
        for key in new_keys:
            del r[key]
    page = report.render(old)
    assert 'id="summary"' in page and 'id="balance"' in page
    assert 'id="time"' not in page and 'svg class="timeline"' not in page


def test_config_values_survive_json() -> None:
    cfg = conpool.Config(no_proxy=["internal.test"], max_idle_time=float("inf"))
    saved = runner.config_dict(cfg)
    assert json.loads(json.dumps(saved)) == saved
    assert saved["max_idle_time"] == "inf" and saved["no_proxy"] == ["internal.test"]
    assert report._config_value("no_proxy", saved["no_proxy"]) == "internal.test"
    assert report._config_value("no_proxy", []) == "none"


# ----------------------------------------------------------------------------
# httpx over the pool's transport


def test_httpx_scenario_runs_next_to_its_baseline(quick: QuickRun) -> None:
    """httpx.AsyncClient over conpool.httpx.AsyncTransport: every request
    succeeds, on all four addresses, and its breakdown adds up like the
    minimal client's (its parts come from the pool's hand-out and release)."""
    by = _by_name(quick.results)
    for name in ("http", "httpx"):
        r = by[name]
        assert r["requests"]["ok"] > 0 and r["requests"]["errors"] == 0, (name, r["errors"])
        assert r["errors"] == [], name
        assert sorted(r["breakdown"]["by_address"]) == sorted(STRESS_ADDRESSES), name
        assert sorted(r["server"]["accepted"]) == sorted(STRESS_ADDRESSES), name
        assert all(n > 0 for n in r["server"]["accepted"].values()), name
        b = r["breakdown"]
        assert b["requests"] == r["requests"]["ok"] and b["max_gap_ns"] == 0, name
        assert sum(b["mean_ms"].values()) == pytest.approx(b["total_ms"], abs=1e-4), name
        assert b["mean_ms"]["wire"] > 0, name
        for ip, parts in b["by_address"].items():
            assert all(v >= 0 for v in parts.values()), (name, ip)
    assert "httpx.AsyncClient over conpool.httpx.AsyncTransport" in quick.html


def test_httpx_missing_is_listed_as_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the httpx extra the scenario is not run, and the report says
    why at its top; the minimal-client baseline still runs."""
    from conpool.stress import httpx_driver

    # None in sys.modules makes `import httpx` raise ImportError.
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "conpool.httpx", raising=False)
    reason = httpx_driver.unavailable_reason()
    assert reason is not None and "conpool[httpx]" in reason
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["--duration", "0.2", "--scenarios", "http,httpx", "--out", str(out), "--json", str(js)]
    assert cli.main(argv) == 0
    results = json.loads(js.read_text())
    assert [s["name"] for s in results["scenarios"]] == ["http"]
    assert results["skipped"] == [{"name": "httpx", "reason": reason}]
    page = out.read_text()
    top = page.index('id="skipped"')
    assert top < page.index('id="summary"')
    assert "needs the httpx extra" in page[top:]
