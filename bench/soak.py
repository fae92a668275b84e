"""``python -m bench.soak``: run the stress scenarios for minutes in one
process and watch its memory and file descriptors.

A leak that costs a few bytes or one descriptor per connection hides in a
benchmark that runs for seconds; run for ten minutes in one long-lived
process and it shows as a slope.  This runs the ``conpool stress`` scenarios
(:func:`conpool.stress.runner.run_scenario`, against the embedded servers in
a child process of their own) round after round, each round on the next
backend (asyncio, uvloop, trio), each scenario with a fresh
:class:`conpool.Pool`.  Every round also ends with an overload burst
(thousands of tasks, ``max_waiters`` and ``acquire_timeout``, random
cancellations), so time-outs and cancellations get soaked too, not only the
happy path.

A thread samples this process's RSS (``VmRSS`` in ``/proc/self/status``)
and its open descriptors (``/proc/self/fd``) once a second, whatever the
event loop is doing.  At the end it prints min / median / max, the slope of
a least-squares line (per minute) and the first- and last-minute averages,
and writes every sample to JSON::

    .venv/bin/python -m bench.soak                       # 10 minutes
    .venv/bin/python -m bench.soak --minutes 1 --out /tmp/soak.json

Exit status 1 when a scenario raised, when the pool's counts did not come
back to zero after a round, or with ``--max-rss-slope`` / ``--max-fd-growth``
when the process grew more than allowed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import conpool
from conpool.stress.runner import RunControl, run_scenario
from conpool.stress.scenarios import Scenario, all_scenarios, select
from conpool.stress.servers import ServerProcess, ServerSpec

__all__ = ["Sampler", "main", "summarise"]

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


# ----------------------------------------------------------------------------
# Sampling


def rss_kib() -> int:
    """Resident set size of this process, in KiB (``VmRSS``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    """Open file descriptors of this process (the listing's own one excluded)."""
    return len(os.listdir("/proc/self/fd")) - 1


class Sampler:
    """A daemon thread that records ``(t_s, rss_kib, fds)`` every ``interval`` s."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        next_at = self._t0
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._t0, 3), rss_kib(), fd_count()))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ----------------------------------------------------------------------------
# Numbers


def slope_per_minute(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt = statistics.fmean(ts)
    my = statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    return cov / var * 60.0


def summarise(ts: Sequence[float], ys: Sequence[float], warmup: float = 60.0) -> dict[str, float]:
    """min, median, max, first/last sample, first- and last-minute averages,
    and the slope per minute over the whole run and after ``warmup`` seconds.

    The warm-up holds the one-off growth: imports, the first TLS context,
    each backend's first event loop and the allocator's arenas reaching
    their working size.  :func:`main` passes the time by which every backend
    has run one round.
    """
    if not ys:
        return {}
    end = ts[-1]
    pairs = list(zip(ts, ys, strict=True))
    first = [y for t, y in pairs if t < 60.0] or [ys[0]]
    last = [y for t, y in pairs if t >= end - 60.0] or [ys[-1]]
    steady = [(t, y) for t, y in pairs if t >= warmup]
    return {
        "min": min(ys),
        "median": statistics.median(ys),
        "max": max(ys),
        "start": ys[0],
        "end": ys[-1],
        "first_minute_mean": round(statistics.fmean(first), 2),
        "last_minute_mean": round(statistics.fmean(last), 2),
        "slope_per_min": round(slope_per_minute(ts, ys), 4),
        "warmup_s": warmup,
        "steady_mean": round(statistics.fmean(y for _, y in steady), 2) if steady else 0.0,
        "slope_per_min_after_warmup": round(
            slope_per_minute([t for t, _ in steady], [y for _, y in steady]), 4
        ),
    }


# ----------------------------------------------------------------------------
# The load


class Overload:
    """Totals of the overload bursts, over the whole soak."""

    def __init__(self) -> None:
        self.ok = 0
        self.timeouts = 0
        self.cancelled = 0
        self.other: dict[str, int] = {}


async def overload_burst(port: int, tasks: int, seed: int, totals: Overload) -> str | None:
    """``tasks`` tasks against a limit of 8 with ``max_waiters`` and
    ``acquire_timeout``, a fifth of them cancelled at a random moment.
    Returns a problem, or None when the pool came back to rest."""
    rng = random.Random(seed)
    ep = conpool.Endpoint("127.0.0.11", port)
    config = conpool.Config(
        max_connections_per_endpoint=8,
        max_waiters=tasks // 4,
        acquire_timeout=0.2,
        max_connection_uses=50,
    )
    async with conpool.Pool(config) as pool:

        async def one(i: int) -> None:
            deadline = rng.uniform(0.0, 0.05) if rng.random() < 0.2 else 5.0
            try:
                with anyio.move_on_after(deadline) as scope:
                    async with pool.connection(ep) as conn:
                        await conn.send(b"x%d\n" % i)
                        await conn.receive()
                        await anyio.sleep(rng.uniform(0.0, 0.002))
            except conpool.PoolTimeout:
                totals.timeouts += 1
                return
            except Exception as exc:
                name = type(exc).__name__
                totals.other[name] = totals.other.get(name, 0) + 1
                return
            if scope.cancelled_caught:
                totals.cancelled += 1
            else:
                totals.ok += 1

        async with anyio.create_task_group() as tg:
            for i in range(tasks):
                tg.start_soon(one, i)
        stats = pool.stats()
        if (stats.active, stats.pending, stats.waiting) != (0, 0, 0):
            return f"overload burst left active/pending/waiting {stats}"
    return None


def chosen_scenarios(patterns: str | None, seconds: float) -> list[Scenario]:
    everything = all_scenarios(seconds)
    if patterns is None:
        return everything
    return select(everything, [p.strip() for p in patterns.split(",") if p.strip()])


async def one_round(
    scenarios: list[Scenario],
    *,
    seconds: float,
    concurrency: int,
    servers: ServerProcess,
    deadline: float,
    round_no: int,
    burst: int,
    totals: Overload,
    log: list[dict[str, Any]],
    backend: str,
    t0: float,
) -> list[str]:
    """Run every scenario once (stopping at ``deadline``); return the problems."""
    problems: list[str] = []
    control = RunControl()
    for scenario in scenarios:
        if time.monotonic() + seconds > deadline:
            break
        started = time.monotonic()
        try:
            r = await run_scenario(
                scenario,
                duration=seconds,
                concurrency=concurrency,
                servers=servers,
                target=None,
                control=control,
            )
        except Exception as exc:  # a crash of the pool is what a soak is for
            problems.append(f"{backend} {scenario.name}: {type(exc).__name__}: {exc}")
            continue
        if r is None:
            problems.append(f"{backend} {scenario.name}: interrupted")
            continue
        stats = r["pool_stats"]
        log.append(
            {
                "round": round_no,
                "backend": backend,
                "scenario": scenario.name,
                "t_s": round(started - t0, 3),
                "ok": r["requests"]["ok"],
                "errors": r["requests"]["errors"],
                "rps": r["throughput_rps"],
                "created": r["connections"]["created"],
            }
        )
        if stats is not None and (stats.get("active"), stats.get("pending")) not in (
            (0, 0),
            (None, None),
        ):
            problems.append(f"{backend} {scenario.name}: left {stats}")
        del r
    if burst and time.monotonic() + 5.0 < deadline:
        problem = await overload_burst(servers.ports["echo"], burst, round_no, totals)
        if problem is not None:
            problems.append(f"{backend} overload: {problem}")
    return problems


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "conpool": conpool.__version__,
    }


def _available(backends: list[str]) -> list[str]:
    out = []
    for name in backends:
        module = "trio" if name == "trio" else "uvloop" if name == "uvloop" else None
        if module is not None:
            try:
                __import__(module)
            except ImportError:
                print(f"soak: {name} is not installed; left out", file=sys.stderr)
                continue
        out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description="Soak the pool: RSS and descriptors over minutes."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--out", default="bench/soak.json", help="JSON results (bench/soak.json)")
    parser.add_argument(
        "--scenario-seconds", type=float, default=5.0, help="seconds per scenario (default 5)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients (default 32)")
    parser.add_argument(
        "--scenarios", help="comma-separated names or globs (default: every scenario)"
    )
    parser.add_argument(
        "--backends",
        default="asyncio,uvloop,trio",
        help="backends, one per round in turn (default asyncio,uvloop,trio)",
    )
    parser.add_argument(
        "--burst", type=int, default=5000, help="tasks in each round's overload burst (0: none)"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="sampling period, s")
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=None,
        help="fail if RSS grows faster than this many MiB/min after the warm-up",
    )
    parser.add_argument(
        "--max-fd-growth",
        type=int,
        default=None,
        help="fail if the last sample has more descriptors than the first plus this",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.scenario_seconds <= 0 or args.interval <= 0:
        parser.error("--minutes, --scenario-seconds and --interval must be positive")
    try:
        scenarios = chosen_scenarios(args.scenarios, args.scenario_seconds)
    except ValueError as exc:
        parser.error(str(exc))
    backends = _available([b.strip() for b in args.backends.split(",") if b.strip()])
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    out = Path(args.out)

    started_at = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    servers = ServerProcess(ServerSpec())
    servers.start()
    sampler = Sampler(args.interval)
    problems: list[str] = []
    log: list[dict[str, Any]] = []
    totals = Overload()
    rounds = 0
    # Between rounds no pool exists and no event loop runs: the process's
    # resting size, the figure a leak moves.
    rest: list[dict[str, Any]] = []
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60.0
    sampler.start()
    try:
        while time.monotonic() + args.scenario_seconds <= deadline:
            backend = backends[rounds % len(backends)]
            name, options = BACKENDS[backend]
            rounds += 1
            print(
                f"soak: round {rounds} on {backend} at {time.monotonic() - t0:.0f} s, "
                f"RSS {rss_kib() / 1024:.1f} MiB, {fd_count()} fds",
                file=sys.stderr,
                flush=True,
            )
            problems += anyio.run(
                functools.partial(
                    one_round,
                    scenarios,
                    seconds=args.scenario_seconds,
                    concurrency=args.concurrency,
                    servers=servers,
                    deadline=deadline,
                    round_no=rounds,
                    burst=args.burst,
                    totals=totals,
                    log=log,
                    backend=backend,
                    t0=t0,
                ),
                backend=name,
                backend_options=options,
            )
            gc.collect()
            rest.append(
                {
                    "round": rounds,
                    "backend": backend,
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_kib": rss_kib(),
                    "fds": fd_count(),
                }
            )
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        sampler.stop()
        servers.stop()

    ts = [s[0] for s in sampler.samples]
    rss_mib = [s[1] / 1024 for s in sampler.samples]
    fds = [float(s[2]) for s in sampler.samples]
    # Warmed up once every backend has run a round.
    warmup = float(rest[len(backends) - 1]["t_s"]) if len(rest) > len(backends) else 60.0
    rss = summarise(ts, rss_mib, warmup)
    fd = summarise(ts, fds, warmup)
    requests_ok = sum(e["ok"] for e in log)
    requests_err = sum(e["errors"] for e in log)
    result = {
        "tool": "bench.soak",
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started_at,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": machine(),
        "options": {
            "minutes": args.minutes,
            "scenario_seconds": args.scenario_seconds,
            "concurrency": args.concurrency,
            "scenarios": [s.name for s in scenarios],
            "backends": backends,
            "burst": args.burst,
            "interval_s": args.interval,
        },
        "rounds": rounds,
        "scenario_runs": len(log),
        "requests": {"ok": requests_ok, "errors": requests_err},
        "overload": {
            "ok": totals.ok,
            "pool_timeouts": totals.timeouts,
            "cancelled": totals.cancelled,
            "other_errors": totals.other,
        },
        "rss_mib": {k: round(v, 2) for k, v in rss.items()},
        "fds": fd,
        "problems": problems,
        "between_rounds": rest,
        "runs": log,
        "samples": {"t_s": ts, "rss_kib": [s[1] for s in sampler.samples], "fds": fds},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)

    print(
        f"{rounds} rounds, {len(log)} scenario runs, {requests_ok} requests "
        f"({requests_err} errors), overload: {totals.ok} served, {totals.timeouts} "
        f"PoolTimeout, {totals.cancelled} cancelled, {sum(totals.other.values())} other"
    )
    for label, s, unit in (("RSS", rss, "MiB"), ("fds", fd, "")):
        if not s:
            continue
        print(
            f"{label:>4}: min {s['min']:.1f} median {s['median']:.1f} max {s['max']:.1f} {unit}; "
            f"start {s['start']:.1f} end {s['end']:.1f}; first minute {s['first_minute_mean']:.1f}"
            f" last minute {s['last_minute_mean']:.1f}; slope {s['slope_per_min']:+.3f}/min "
            f"({s['slope_per_min_after_warmup']:+.3f}/min after the {s['warmup_s']:.0f} s "
            f"warm-up, mean {s['steady_mean']:.1f})"
        )
    if rest:
        print(
            "between rounds (no pool, no loop): "
            + ", ".join(
                f"{r['backend']} {r['rss_kib'] / 1024:.1f} MiB/{r['fds']} fds" for r in rest
            )
        )
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"samples written to {out}", file=sys.stderr)
    status = 1 if problems else 0
    if args.max_rss_slope is not None and rss:
        if rss["slope_per_min_after_warmup"] > args.max_rss_slope:
            print("RSS grew faster than --max-rss-slope", file=sys.stderr)
            status = 1
    if args.max_fd_growth is not None and fd and fd["end"] - fd["start"] > args.max_fd_growth:
        print("descriptors grew more than --max-fd-growth", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
