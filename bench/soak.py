"""``python -m bench.soak [--minutes 10] [--out FILE]``: the ``conpool stress``
scenarios round after round in one process, watching its RSS and descriptors.

A leak of a few bytes or one descriptor per connection hides in a benchmark
of seconds; over ten minutes in one process it shows as a slope.  Each round
runs every scenario on the next backend (asyncio, uvloop, trio), each with a
fresh Pool, and ends with an overload burst (thousands of tasks,
``max_waiters``, ``acquire_timeout``, random cancellations).  A thread
samples RSS and open descriptors once a second.  Exit status 1 when a
scenario raised, when a pool's counts did not come back to zero, or past
``--max-rss-slope`` / ``--max-fd-growth``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
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
from bench.procs import cpu_model, status_kb
from conpool.stress.runner import RunControl, run_scenario
from conpool.stress.scenarios import all_scenarios, select
from conpool.stress.servers import ServerProcess, ServerSpec

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def rss_kib() -> int:
    return int(status_kb("VmRSS"))


def fd_count() -> int:
    """Open descriptors of this process (the listing's own one excluded)."""
    return len(os.listdir("/proc/self/fd")) - 1


class Sampler:
    """A daemon thread recording ``(t_s, rss_kib, fds)`` every ``interval`` s,
    whatever the event loop is doing."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._t0 = time.monotonic()

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


def slope_per_minute(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per minute."""
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    cov = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True))
    return cov / var * 60.0 if var else 0.0


def summarise(ts: Sequence[float], ys: Sequence[float], warmup: float = 60.0) -> dict[str, float]:
    """min, median, max, first and last, the first- and last-minute means, and
    the slope per minute over the whole run and after ``warmup`` seconds (the
    one-off growth: imports, first TLS contexts, each backend's first loop,
    the allocator's arenas reaching their working size)."""
    if not ys:
        return {}
    pairs = list(zip(ts, ys, strict=True))
    first = [y for t, y in pairs if t < 60.0] or [ys[0]]
    last = [y for t, y in pairs if t >= ts[-1] - 60.0] or [ys[-1]]
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


class Overload:
    """Totals of the overload bursts, over the whole soak."""

    def __init__(self) -> None:
        self.ok = self.timeouts = self.cancelled = 0
        self.other: dict[str, int] = {}


async def overload_burst(port: int, tasks: int, seed: int, totals: Overload) -> str | None:
    """``tasks`` tasks against a limit of 8 with ``max_waiters`` and
    ``acquire_timeout``, a fifth cancelled at a random moment.  Returns a
    problem, or None when the pool came back to rest."""
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


class Soak:
    """One soak: the rounds run so far, what they logged, what went wrong."""

    def __init__(self, args: argparse.Namespace, servers: ServerProcess) -> None:
        self.args, self.servers = args, servers
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.minutes * 60.0
        self.totals = Overload()
        self.problems: list[str] = []
        self.log: list[dict[str, Any]] = []  # one entry per scenario run
        # Between rounds no pool exists and no loop runs: the process's
        # resting size, the figure a leak moves.
        self.rest: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        args = self.args
        while time.monotonic() + args.scenario_seconds <= self.deadline:
            backend = args.backends[len(self.rest) % len(args.backends)]
            name, options = BACKENDS[backend]
            print(
                f"soak: round {len(self.rest) + 1} on {backend} at {self.elapsed():.0f} s, "
                f"RSS {rss_kib() / 1024:.1f} MiB, {fd_count()} fds",
                file=sys.stderr,
                flush=True,
            )
            anyio.run(self.round, backend, backend=name, backend_options=options)
            gc.collect()
            self.rest.append(
                {
                    "round": len(self.rest) + 1,
                    "backend": backend,
                    "t_s": round(self.elapsed(), 1),
                    "rss_kib": rss_kib(),
                    "fds": fd_count(),
                }
            )

    async def round(self, backend: str) -> None:
        """Every scenario once (stopping at the deadline), then the burst."""
        args, number = self.args, len(self.rest) + 1
        control = RunControl()
        for scenario in args.chosen:
            if time.monotonic() + args.scenario_seconds > self.deadline:
                break
            started = self.elapsed()
            try:
                r = await run_scenario(
                    scenario,
                    duration=args.scenario_seconds,
                    concurrency=args.concurrency,
                    servers=self.servers,
                    target=None,
                    control=control,
                )
            except Exception as exc:  # a crash of the pool is what a soak is for
                self.problems.append(f"{backend} {scenario.name}: {type(exc).__name__}: {exc}")
                continue
            if r is None:
                self.problems.append(f"{backend} {scenario.name}: interrupted")
                continue
            self.log.append(
                {
                    "round": number,
                    "backend": backend,
                    "scenario": scenario.name,
                    "t_s": round(started, 3),
                    "ok": r["requests"]["ok"],
                    "errors": r["requests"]["errors"],
                    "rps": r["throughput_rps"],
                    "created": r["connections"]["created"],
                }
            )
            stats = r["pool_stats"] or {}
            if stats.get("active", 0) or stats.get("pending", 0):
                self.problems.append(f"{backend} {scenario.name}: left {stats}")
        if args.burst and time.monotonic() + 5.0 < self.deadline:
            port = self.servers.ports["echo"]
            problem = await overload_burst(port, args.burst, number, self.totals)
            if problem is not None:
                self.problems.append(f"{backend} overload: {problem}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description="Soak the pool: RSS and descriptors over minutes."
    )
    add = p.add_argument
    add("--minutes", type=float, default=10.0, help="how long (default 10)")
    add("--out", type=Path, default=Path("bench/soak.json"), help="JSON (bench/soak.json)")
    add("--scenario-seconds", type=float, default=5.0, help="seconds per scenario (default 5)")
    add("--concurrency", type=int, default=32, help="clients (default 32)")
    add("--scenarios", help="comma-separated names or globs (default: every scenario)")
    add("--backends", default="asyncio,uvloop,trio", help="one per round in turn")
    add("--burst", type=int, default=5000, help="tasks in each round's overload burst (0: none)")
    add("--interval", type=float, default=1.0, help="sampling period, s")
    add("--max-rss-slope", type=float, help="fail past this many MiB/min after the warm-up")
    add("--max-fd-growth", type=int, help="fail if the last sample has this many more fds")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.scenario_seconds <= 0 or args.interval <= 0:
        p.error("--minutes, --scenario-seconds and --interval must be positive")
    everything = all_scenarios(args.scenario_seconds)
    try:
        patterns = [x.strip() for x in (args.scenarios or "").split(",") if x.strip()]
        args.chosen = select(everything, patterns) if patterns else everything
    except ValueError as exc:
        p.error(str(exc))
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or any(b not in BACKENDS for b in args.backends):
        p.error(f"--backends: choose from {', '.join(BACKENDS)}")
    for name in ("uvloop", "trio"):
        if name in args.backends and importlib.util.find_spec(name) is None:
            print(f"soak: {name} is not installed; left out", file=sys.stderr)
            args.backends.remove(name)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    servers = ServerProcess(ServerSpec())
    servers.start()
    sampler = Sampler(args.interval)
    soak = Soak(args, servers)
    sampler.start()
    try:
        soak.run()
    except KeyboardInterrupt:
        soak.problems.append("interrupted")
    finally:
        sampler.stop()
        servers.stop()
    problems, log, rest, totals = soak.problems, soak.log, soak.rest, soak.totals

    ts = [s[0] for s in sampler.samples]
    # Warmed up once every backend has run a round.
    n_back = len(args.backends)
    warmup = float(rest[n_back - 1]["t_s"]) if len(rest) > n_back else 60.0
    rss = summarise(ts, [s[1] / 1024 for s in sampler.samples], warmup)
    fd = summarise(ts, [float(s[2]) for s in sampler.samples], warmup)
    ok, errors = sum(e["ok"] for e in log), sum(e["errors"] for e in log)
    result = {
        "tool": "bench.soak",
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started_at,
        "elapsed_s": round(soak.elapsed(), 1),
        "machine": {
            "host": platform.node(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "conpool": conpool.__version__,
        },
        "options": {
            "minutes": args.minutes,
            "scenario_seconds": args.scenario_seconds,
            "concurrency": args.concurrency,
            "scenarios": [s.name for s in args.chosen],
            "backends": args.backends,
            "burst": args.burst,
            "interval_s": args.interval,
        },
        "rounds": len(rest),
        "scenario_runs": len(log),
        "requests": {"ok": ok, "errors": errors},
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
        "samples": {
            "t_s": ts,
            "rss_kib": [s[1] for s in sampler.samples],
            "fds": [s[2] for s in sampler.samples],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)

    print(
        f"{len(rest)} rounds, {len(log)} scenario runs, {ok} requests ({errors} errors), "
        f"overload: {totals.ok} served, {totals.timeouts} PoolTimeout, {totals.cancelled} "
        f"cancelled, {sum(totals.other.values())} other"
    )
    for label, s, unit in (("RSS", rss, "MiB"), ("fds", fd, "")):
        if s:
            print(
                f"{label:>4}: min {s['min']:.1f} median {s['median']:.1f} max {s['max']:.1f} "
                f"{unit}; start {s['start']:.1f} end {s['end']:.1f}; first minute "
                f"{s['first_minute_mean']:.1f} last minute {s['last_minute_mean']:.1f}; slope "
                f"{s['slope_per_min']:+.3f}/min ({s['slope_per_min_after_warmup']:+.3f}/min "
                f"after the {s['warmup_s']:.0f} s warm-up, mean {s['steady_mean']:.1f})"
            )
    if rest:
        shown = (f"{r['backend']} {r['rss_kib'] / 1024:.1f} MiB/{r['fds']} fds" for r in rest)
        print("between rounds (no pool, no loop): " + ", ".join(shown))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"samples written to {args.out}", file=sys.stderr)
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
