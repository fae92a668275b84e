"""``conpool stress``: run the scenario matrix and write the report.

With no arguments it starts its own servers on 127.0.0.11-14 in a child
process, runs every scenario for a few seconds each (under a minute in all),
shows a progress bar per scenario and a summary table, and writes
``conpool-report.html``.  Ctrl-C stops the scenario that is running and
still writes the report of those that finished (exit status 130).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table

import conpool

from . import fleet, httpx_driver
from .protocols import PROTOCOLS
from .report import render, summary_rows
from .runner import RUNNERS, RunControl, Target, environment, run_scenario
from .scenarios import Scenario, all_scenarios, select
from .servers import STRESS_ADDRESSES, ServerError, ServerProcess, ServerSpec
from .svg import fmt_ms

__all__ = ["DEFAULT_DURATION", "QUICK_DURATION", "build_parser", "main"]

#: Seconds per scenario: the full matrix stays under a minute.
DEFAULT_DURATION = 3.0
#: Seconds per scenario with --quick.
QUICK_DURATION = 0.5
DEFAULT_CONCURRENCY = 64
BACKENDS = ("asyncio", "uvloop", "trio")


class UsageError(Exception):
    """Bad options: reported as a usage error (exit status 2)."""


# ----------------------------------------------------------------------------
# Options


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 3600 seconds, got {text}")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, got {value}")
    return value


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be between 1 and 64, got {value}")
    return value


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            "expected redis://HOST:PORT/DB, rediss://... or unix:///PATH"
        )
    return text


def _target(text: str) -> conpool.Endpoint:
    try:
        return conpool.Endpoint.parse(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or unix:PATH, {exc}") from None


def build_parser(prog: str = "conpool stress") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load conpool with a matrix of scenarios and write a self-contained HTML report. "
            "With no options it starts its own echo, HTTP/1.1 and TLS servers on "
            "127.0.0.11-14 (one name, four addresses) and runs every scenario."
        ),
        epilog=(
            "examples:\n"
            "  conpool stress --quick\n"
            "  conpool stress --scenarios 'limit-*,tls' --json results.json\n"
            "  conpool stress --target 127.0.0.1:6379 --protocol redis\n"
            "  conpool stress --target unix:/run/redis/redis.sock --protocol redis\n"
            "  conpool stress --trace traces/   # then open traces/churn.trace.json in Perfetto\n"
            "\n"
            "Ctrl-C stops the run and still writes the report of the scenarios that finished "
            "(exit status 130)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION:g} s per scenario instead of {DEFAULT_DURATION:g} s",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        metavar="S",
        help=f"seconds per scenario (default {DEFAULT_DURATION:g}, "
        f"{QUICK_DURATION:g} with --quick)",
    )
    parser.add_argument(
        "--concurrency",
        "--clients",
        type=_concurrency,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"concurrent client tasks (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--scenarios",
        metavar="A,B",
        help="comma-separated scenario names or globs, e.g. 'limit-*,tls' (default: all; "
        "--list shows them)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--out",
        default="conpool-report.html",
        metavar="PATH",
        help="where to write the HTML report (default conpool-report.html)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="asyncio",
        help="event loop the pool runs on (default asyncio)",
    )
    parser.add_argument(
        "--target",
        type=_target,
        metavar="HOST:PORT",
        help="stress a real server instead of the embedded ones",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="what the --target speaks (default http)",
    )
    parser.add_argument(
        "--trace",
        metavar="DIR",
        help="write each scenario's Chrome/Perfetto trace to DIR/SCENARIO.trace.json "
        "(created if missing); the report links them",
    )
    parser.add_argument(
        "--fleet-processes",
        type=_processes,
        default=fleet.DEFAULT_PROCESSES,
        metavar="N",
        help="processes of the fleet scenario, each with its own pool, sharing one "
        f"RedisBudget (default {fleet.DEFAULT_PROCESSES})",
    )
    parser.add_argument(
        "--redis-url",
        type=_redis_url,
        metavar="URL",
        help="the Redis of the fleet scenario's budget (default: a redis-server from PATH, "
        "started on a free loopback port; without one the scenario is skipped)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="write the report from results saved with --json, without running anything",
    )
    return parser


def _check_output(path: str, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {path!r} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} {path!r}: directory {str(parent)!r} is not writable")
    return p


def _trace_dir(path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--trace {path!r} is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--trace {path!r}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"--trace {path!r}: directory is not writable")
    return p.resolve()


def _backend_available(backend: str) -> None:
    module = {"uvloop": "uvloop", "trio": "trio"}.get(backend)
    if module is not None and importlib.util.find_spec(module) is None:
        raise UsageError(
            f"--backend {backend} needs the {module} package: pip install 'conpool[{module}]'"
        )


# ----------------------------------------------------------------------------
# Terminal output


class _UI:
    """A progress bar per scenario on a terminal; one line per scenario otherwise."""

    def __init__(self, console: Console, names: list[str]) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.last_refresh = 0.0
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(bar_width=30),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                auto_refresh=False,
            )
            for name in names:
                self.tasks[name] = self.progress.add_task(name, total=100, info="[dim]waiting[/]")

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.progress is None:
            yield
            return
        with self.progress:
            yield

    def update(self, name: str, fraction: float, ok: int, errors: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        err = f" · [red]{errors:,} errors[/]" if errors else ""
        self.progress.update(
            self.tasks[name], completed=fraction * 100, info=f"{ok:,} requests{err}"
        )
        if now - self.last_refresh > 0.12:
            self.last_refresh = now
            self.progress.refresh()

    def done(self, name: str, r: dict[str, Any]) -> None:
        ok, errors = r["requests"]["ok"], r["requests"]["errors"]
        lat = r["latency_ms"]
        text = (
            f"{ok:,} requests · {round(r['throughput_rps']):,} req/s · "
            f"p99 {fmt_ms(lat['p99'])} · {errors:,} errors"
        )
        if self.progress is not None:
            self.progress.update(self.tasks[name], completed=100, info=text)
            self.progress.refresh()
        else:
            self.console.print(f"finished {name}: {text}", highlight=False)

    def interrupted(self, name: str | None) -> None:
        if self.progress is not None and name is not None:
            self.progress.update(self.tasks[name], info="[yellow]interrupted[/]")
            self.progress.refresh()


def _summary_table(results: dict[str, Any]) -> Table:
    table = Table(title="conpool stress", title_justify="left")
    for col, right in (
        ("scenario", False),
        ("protocol", False),
        ("req/s", True),
        ("p50", True),
        ("p99", True),
        ("max", True),
        ("acquire p99", True),
        ("created", True),
        ("reused", True),
        ("errors", True),
    ):
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(
            row["name"],
            row["protocol"],
            f"{round(row['throughput_rps']):,}",
            fmt_ms(row["p50"]),
            fmt_ms(row["p99"]),
            fmt_ms(row["max"]),
            fmt_ms(row["acquire_p99"]),
            f"{row['created']:,}",
            f"{row['reused']:,}",
            f"[red]{row['errors']:,}[/]" if row["errors"] else "0",
        )
    return table


# ----------------------------------------------------------------------------
# Log messages (asyncio's warnings, say) go to the report, not over the progress bars


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.entries: dict[tuple[str, str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        key = (record.name, record.levelname, message)
        self.entries[key] = self.entries.get(key, 0) + 1

    def result(self) -> list[dict[str, Any]]:
        return [
            {"logger": name, "level": level, "message": message, "count": count}
            for (name, level, message), count in sorted(self.entries.items(), key=lambda kv: -kv[1])
        ]


@contextlib.contextmanager
def _collect_logs() -> Iterator[_LogCollector]:
    collector = _LogCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield collector
    finally:
        root.removeHandler(collector)


# ----------------------------------------------------------------------------
# The run


async def _watch_signals(control: RunControl) -> None:
    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        with receiver as signals:
            async for _ in signals:
                control.request_stop()
    except (ValueError, RuntimeError, NotImplementedError):
        # Not the main thread: Ctrl-C arrives as KeyboardInterrupt instead.
        await anyio.sleep_forever()


async def _run_all(
    scenarios: list[Scenario],
    *,
    duration: float,
    concurrency: int,
    backend: str,
    servers: ServerProcess | None,
    target: Target | None,
    results: dict[str, Any],
    ui: _UI,
    control: RunControl,
    trace_dir: Path | None = None,
) -> None:
    results["environment"] = environment(backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, control)
        for scenario in scenarios:
            if control.stop:
                results["interrupted"] = True
                break
            try:
                r = await run_scenario(
                    scenario,
                    duration=duration,
                    concurrency=concurrency,
                    servers=servers,
                    target=target,
                    control=control,
                    progress=ui.update,
                    trace_path=str(trace_dir / f"{scenario.name}.trace.json")
                    if trace_dir is not None
                    else None,
                )
            except ServerError as exc:
                if scenario.driver not in RUNNERS:
                    raise
                # A scenario of processes of its own (fleet) that could not
                # run: the others still get their report.
                results["skipped"].append({"name": scenario.name, "reason": f"failed: {exc}"})
                ui.interrupted(scenario.name)
                continue
            if r is None:
                results["interrupted"] = True
                results["interrupted_scenario"] = scenario.name
                ui.interrupted(scenario.name)
                break
            results["scenarios"].append(r)
            ui.done(scenario.name, r)
        tg.cancel_scope.cancel()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _preflight(target: conpool.Endpoint) -> None:
    try:
        if target.path is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3.0)
                sock.connect(target.path)
        else:
            with socket.create_connection((target.host, target.port), timeout=3.0):
                pass
    except OSError as exc:
        raise ServerError(f"cannot connect to --target {target}: {exc}") from exc


def _write(results: dict[str, Any], out: Path, json_path: Path | None) -> None:
    if json_path is not None:
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, json_path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(results), encoding="utf-8")
    os.replace(tmp, out)


def _plan(
    args: argparse.Namespace, duration: float
) -> tuple[list[Scenario], list[dict[str, str]], Target | None]:
    target: Target | None = None
    if args.target is not None:
        target = Target(args.target.host, args.target.port, args.protocol or "http")
    elif args.protocol is not None:
        raise UsageError("--protocol only applies with --target HOST:PORT")
    everything = all_scenarios(duration, target=target is not None)
    skipped: list[dict[str, str]] = []
    if target is not None:
        run_names = {s.name for s in everything}
        skipped = [
            {"name": s.name, "reason": "needs the embedded servers (not possible with --target)"}
            for s in all_scenarios(duration)
            if s.name not in run_names
        ]
    if args.scenarios is not None:
        patterns = [p.strip() for p in args.scenarios.split(",") if p.strip()]
        if not patterns:
            raise UsageError("--scenarios needs at least one name")
        if target is not None:
            # A name that only the embedded servers can run deserves a precise error.
            available = {s.name for s in everything}
            for pattern in patterns:
                blocked = [
                    s.name
                    for s in all_scenarios(duration)
                    if s.name not in available and fnmatch.fnmatchcase(s.name, pattern)
                ]
                if blocked and not any(fnmatch.fnmatchcase(n, pattern) for n in available):
                    raise UsageError(
                        f"scenario {blocked[0]!r} needs the embedded servers and cannot run "
                        "with --target"
                    )
        try:
            chosen = select(everything, patterns)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        skipped = [s for s in skipped if any(fnmatch.fnmatchcase(s["name"], p) for p in patterns)]
        return chosen, skipped, target
    return everything, skipped, target


def main(argv: list[str] | None = None, prog: str = "conpool stress") -> int:
    """``conpool stress``; returns the exit status (0, 1 on failure, 2 for
    bad options, 130 when interrupted)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    out_console = Console()
    for console in (err, out_console):
        if not console.is_terminal:
            # A pipe or a file: no terminal width to respect, keep tables and lines whole.
            console.width = max(console.width, 132)
    duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    fleet.OPTIONS = fleet.FleetOptions(
        processes=args.fleet_processes,
        redis_url=args.redis_url,
        redis_given=args.redis_url is not None,
        backend=args.backend,
    )
    try:
        if args.list:
            scenarios = all_scenarios(duration, target=args.target is not None)
            for s in scenarios:
                out_console.print(f"[bold]{s.name:<28}[/] {s.title}", highlight=False)
            return 0
        out = _check_output(args.out, "--out")
        json_path = _check_output(args.json, "--json") if args.json else None
        if args.render is not None:
            try:
                saved = json.loads(Path(args.render).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"--render {args.render!r}: {exc}") from None
            if not isinstance(saved, dict) or "scenarios" not in saved:
                raise UsageError(f"--render {args.render!r}: not results written by --json")
            _write(saved, out, None)
            err.print(f"report written to {out}", highlight=False)
            return 0
        _backend_available(args.backend)
        scenarios, skipped, target = _plan(args, duration)
        if any(s.name == fleet.NAME for s in scenarios):
            reason = fleet.unavailable_reason()
            if reason is not None:
                skipped.append({"name": fleet.NAME, "reason": reason})
                scenarios = [s for s in scenarios if s.name != fleet.NAME]
        if any(s.name == httpx_driver.NAME for s in scenarios):
            reason = httpx_driver.unavailable_reason()
            if reason is not None:
                skipped.append({"name": httpx_driver.NAME, "reason": reason})
                scenarios = [s for s in scenarios if s.name != httpx_driver.NAME]
        trace_dir = _trace_dir(args.trace) if args.trace is not None else None
    except UsageError as exc:
        parser.error(str(exc))  # exits with status 2

    results: dict[str, Any] = {
        "schema": 2,  # 2: breakdown, lag, tail, waves, cpu, timeline, trace files
        "tool": "conpool stress",
        "started": _now(),
        "finished": None,
        "interrupted": False,
        "interrupted_scenario": None,
        "environment": {"conpool": conpool.__version__, "backend": args.backend},
        "options": {
            "duration_s": duration,
            "concurrency": args.concurrency,
            "scenarios": [s.name for s in scenarios],
            "backend": args.backend,
            "target": str(args.target) if args.target is not None else None,
            "protocol": target.protocol if target is not None else None,
            "quick": args.quick,
            "fleet_processes": args.fleet_processes,
            "redis_url": fleet._redact(args.redis_url) if args.redis_url else None,
        },
        "servers": None,
        "scenarios": [],
        "skipped": skipped,
        "log": [],
        "trace_dir": os.path.relpath(trace_dir, out.parent.resolve()) if trace_dir else None,
    }
    for skip in skipped:
        err.print(f"[yellow]not run: {skip['name']}: {skip['reason']}[/]", highlight=False)
    ui = _UI(err, [s.name for s in scenarios])
    control = RunControl()
    servers: ServerProcess | None = None
    redis: fleet.RedisProcess | None = None
    status = 0
    t_start = time.monotonic()
    with _collect_logs() as logs:
        try:
            if target is not None:
                _preflight(args.target)
            needs_servers = target is None or any(s.port in ("slow", "uneven") for s in scenarios)
            if needs_servers:
                spec = ServerSpec(
                    embedded=target is None,
                    proxy_to=(target.host, target.port) if target is not None else None,
                )
                servers = ServerProcess(spec)
                servers.start()
                results["servers"] = {
                    "addresses": ", ".join(STRESS_ADDRESSES),
                    "ports": ", ".join(f"{k} {v}" for k, v in servers.ports.items()),
                    "event loop": servers.loop_name,
                    "process": "a child process of its own, so the client loop measures the pool",
                    "notes": "; ".join(servers.notes) or "none",
                }
                if servers.ca_pem is None and any(s.port == "tls" for s in scenarios):
                    reason = "; ".join(servers.notes) or "no TLS listener"
                    results["skipped"].append({"name": "tls", "reason": reason})
                    scenarios = [s for s in scenarios if s.port != "tls"]
            if any(s.name == fleet.NAME for s in scenarios) and args.redis_url is None:
                redis = fleet.RedisProcess()
                try:
                    redis.start()
                except ServerError as exc:
                    redis = None
                    results["skipped"].append({"name": fleet.NAME, "reason": str(exc)})
                    scenarios = [s for s in scenarios if s.name != fleet.NAME]
                else:
                    fleet.OPTIONS.redis_url = redis.url
                    fleet.OPTIONS.redis_version = redis.version
            backend_options: dict[str, Any] = {}
            backend = args.backend
            if backend == "uvloop":
                backend, backend_options = "asyncio", {"use_uvloop": True}
            with ui.running():
                anyio.run(
                    lambda: _run_all(
                        scenarios,
                        duration=duration,
                        concurrency=args.concurrency,
                        backend=args.backend,
                        servers=servers,
                        target=target,
                        results=results,
                        ui=ui,
                        control=control,
                        trace_dir=trace_dir,
                    ),
                    backend=backend,
                    backend_options=backend_options,
                )
        except KeyboardInterrupt:
            results["interrupted"] = True
        except ServerError as exc:
            err.print(f"[red]conpool stress: {exc}[/]", highlight=False)
            status = 1
        finally:
            if redis is not None:
                redis.stop()
            if servers is not None:
                servers.stop()
        results["log"] = logs.result()
    if status:
        return status
    results["finished"] = _now()
    results["elapsed_s"] = round(time.monotonic() - t_start, 3)
    _write(results, out, json_path)
    if results["scenarios"]:
        out_console.print(_summary_table(results))
    if results["interrupted"]:
        err.print(
            f"[yellow]interrupted: {len(results['scenarios'])} of {len(scenarios)} scenarios "
            "finished[/]",
            highlight=False,
        )
    err.print(
        f"report written to {out}" + (f", results to {json_path}" if json_path else ""),
        highlight=False,
    )
    return 130 if results["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
