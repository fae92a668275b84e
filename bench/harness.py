"""The harness: ``python -m bench [--workload W ...] [--repeat N] [--json FILE]``.

It starts the echo server (its own process, pinned to one core), then for
each repeat runs every cell of the matrix in a fresh client process pinned to
the other core, in a shuffled order that keeps paired cells together.  Ratios
pair the two cells of one repeat, so that slow drift of a noisy machine
cancels out; the tables show the median and the range over the repeats.
Every client process has a time limit and the whole run a budget: cells that
would overrun it are skipped and reported, not waited for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.base import (
    LOOPS,
    Cell,
    CellSpec,
    Options,
    Stat,
    Summary,
    Target,
    Workload,
    table,
)
from bench.procs import ROOT, child_env, cores, cpu_model
from bench.registry import WORKLOADS
from bench.servers import Running, start

HOST = "127.0.0.1"
CELL_SLACK = 30.0  # seconds a client may take beyond its phases: a limit, not an estimate
CELL_OVERHEAD = 0.45  # what a client process costs beyond its phases, for the estimate
PACKAGES = "conpool anyio uvloop trio asyncio-connection-pool generic-connection-pool"
PACKAGES += " httpcore h11 aiohttp"

Planned = tuple[Workload, Options, Cell]


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run conpool's benchmark matrix and print ratios measured side by side.",
    )
    add = p.add_argument
    add("--workload", action="append", choices=list(WORKLOADS), help="only these (repeatable)")
    add("--repeat", type=int, default=None, help="repeats of the matrix (default 3, --quick 1)")
    add("--quick", action="store_true", help="short phases, a smaller matrix, 1 repeat")
    results = ROOT / "bench" / "results.json"
    add("--json", "--out", dest="json", type=Path, default=results, metavar="FILE", help="results")
    add("--impl", action="append", help="only these implementations (repeatable)")
    add("--loop", action="append", choices=LOOPS, help="only these loops (repeatable)")
    add("--conc", type=_levels, default=(1, 16, 64), help="concurrency levels (default 1,16,64)")
    add("--duration", type=float, help="seconds measured per phase (every workload)")
    add("--warmup", type=float, help="seconds of warmup per phase (every workload)")
    add("--seed", type=int, default=None, help="shuffle seed (default: random)")
    add("--no-pin", action="store_true", help="do not pin processes to cores")
    add("--budget", type=float, help="seconds for the run; cells past it are skipped")
    add("--quiet-wait", type=float, default=0.0, metavar="S", help="wait up to S s before a cell")
    add("--quiet-cores", type=float, default=0.25, metavar="X", help="for others to use < X cores")
    add("--list", action="store_true", help="print the matrix and exit")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if any(c < 1 for c in args.conc):
        p.error("--conc values must be positive")
    return args


# -- the machine ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES.split():
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def source_state() -> dict[str, str]:
    """Which conpool was measured: the commit, and a digest of src/ as it is."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "src_modified": "yes" if _git("status", "--porcelain", "--", "src") else "no",
        "src_sha256": digest.hexdigest()[:16],
    }


def _busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int) -> float | None:
    try:
        after = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after[11]) + int(after[12])) / os.sysconf("SC_CLK_TCK")


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Interference:
    """The CPU other processes took meanwhile, in cores: the machine's busy
    time minus the clients' and the server's."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.busy0, self.server0 = _busy_seconds(), _process_seconds(server_pid)
        self.client0 = _children_seconds()

    def cores(self) -> float | None:
        busy1, server1 = _busy_seconds(), _process_seconds(self.pid)
        wall = time.monotonic() - self.t0
        if busy1 is None or server1 is None or self.busy0 is None or self.server0 is None:
            return None
        ours = (_children_seconds() - self.client0) + (server1 - self.server0)
        return max(0.0, (busy1 - self.busy0 - ours) / wall) if wall > 0 else None


def wait_for_quiet(server_pid: int, limit: float, threshold: float) -> None:
    """Wait up to ``limit`` s until others use under ``threshold`` cores."""
    deadline = time.monotonic() + limit
    while True:
        probe = Interference(server_pid)
        time.sleep(0.25)
        load = probe.cores()
        if load is None or load < threshold or time.monotonic() >= deadline:
            return


# -- the matrix -----------------------------------------------------------------------


def plan(args: argparse.Namespace) -> tuple[list[Planned], list[str]]:
    """Every cell to run with its workload and options; and what was left out."""
    out = []
    missing: set[str] = set()
    for name, w in WORKLOADS.items():
        if args.workload and name not in args.workload:
            continue
        duration, warmup = w.quick_seconds if args.quick else w.seconds
        opts = Options(
            duration=duration if args.duration is None else args.duration,
            warmup=warmup if args.warmup is None else args.warmup,
            conc=tuple(args.conc),
            quick=args.quick,
        )
        for cell in w.cells(opts):
            if (args.impl and cell.impl not in args.impl) or (
                args.loop and cell.loop not in args.loop
            ):
                continue
            absent = w.missing(cell)
            missing.update(absent)
            if not absent:
                out.append((w, opts, cell))
    return out, [f"{m} is not installed: its cells were left out" for m in sorted(missing)]


def shuffled(matrix: list[Planned], rng: random.Random) -> list[Planned]:
    """Groups in random order, cells in random order within their group."""
    groups: dict[str, list[Planned]] = {}
    for item in matrix:
        groups.setdefault(item[0].group(item[2]), []).append(item)
    order = list(groups.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    return [item for group in order for item in group]


def expected_seconds(w: Workload, opts: Options) -> float:
    return w.phases * (opts.warmup + opts.duration) + CELL_OVERHEAD


def run_cell(spec: CellSpec, timeout: float) -> tuple[dict[str, float] | None, str | None]:
    """(metrics, None) or (None, what went wrong)."""
    cmd = [sys.executable, "-m", "bench.cell", spec.to_json()]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"exit {done.returncode}: {tail}"
    try:
        metrics = {str(k): float(v) for k, v in json.loads(lines[-1])["metrics"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"bad output {lines[-1]!r}: {exc}"
    return metrics, None


def summarize(matrix: list[Planned], runs: list[dict[str, Any]], repeats: int) -> Summary:
    per_repeat: dict[int, dict[str, dict[str, float]]] = {}
    for run in runs:
        if run.get("metrics") is not None:
            per_repeat.setdefault(run["repeat"], {})[run["key"]] = run["metrics"]
    values: dict[str, dict[str, list[float]]] = {}
    for by_key in per_repeat.values():
        for key, metrics in by_key.items():
            for metric, v in metrics.items():
                values.setdefault(key, {}).setdefault(metric, []).append(v)
    summary = Summary(repeats)
    summary.cells = {k: {m: Stat.of(vs) for m, vs in ms.items()} for k, ms in values.items()}
    for w in {w.name: w for w, _, _ in matrix}.values():
        for ratio in w.ratios([c for ww, _, c in matrix if ww is w]):
            paired = [
                by_key[ratio.num.key][ratio.metric] / by_key[ratio.den.key][ratio.metric]
                for by_key in per_repeat.values()
                if ratio.num.key in by_key and ratio.den.key in by_key
            ]
            if paired:
                summary.ratios[(ratio.label, ratio.num.key, ratio.den.key)] = Stat.of(paired)
    return summary


def report(matrix: list[Planned], summary: Summary) -> tuple[list[str], list[Target]]:
    lines: list[str] = []
    targets: list[Target] = []
    for w, opts in {w: o for w, o, _ in matrix}.items():
        cells = [c for ww, _, c in matrix if ww is w]
        lines += ["", f"== {w.title} ({opts.duration:g} s per phase, warmup {opts.warmup:g} s)"]
        lines += w.report(summary, cells)
        targets += w.targets(summary, cells)
    if targets:

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        def verdict(ok: bool | None) -> str:
            return "" if ok is None else "ok" if ok else "MISSED"

        rows = [
            [
                t.what,
                t.goal or "(none)",
                num(t.wall),
                verdict(t.ok_wall),
                num(t.cpu),
                verdict(t.ok_cpu),
            ]
            for t in targets
        ]
        lines += ["", "== Targets: medians by wall-clock time and by client CPU time", ""]
        lines += table(["check", "goal", "wall", "", "cpu", ""], rows)
    return lines, targets


def measure(
    item: Planned, run: dict[str, Any], args: argparse.Namespace, server: Running, cpu: int | None
) -> None:
    """Run one cell in a client process and record what it did in ``run``."""
    w, opts, cell = item
    if args.quiet_wait > 0:
        waited = time.monotonic()
        wait_for_quiet(server.pid, args.quiet_wait, args.quiet_cores)
        run["quiet_wait_s"] = round(time.monotonic() - waited, 2)
    spec = CellSpec(cell, HOST, server.port, opts.duration, opts.warmup, cpu)
    t0 = time.monotonic()
    others = Interference(server.pid)
    metrics, error = run_cell(spec, expected_seconds(w, opts) + CELL_SLACK)
    run["wall_s"] = round(time.monotonic() - t0, 3)
    load = others.cores()
    run["other_cores"] = None if load is None else round(load, 3)
    run["metrics"] = metrics
    if error is not None:
        run["error"] = error


def header(meta: dict[str, Any], runs: list[dict[str, Any]], pinned: str) -> list[str]:
    """The lines above the tables: when, what, where, and how loaded (which
    also goes into ``meta``)."""
    lines = [
        f"conpool bench  {meta['date']}  {meta['repeat']} repeat(s), shuffled, seed {meta['seed']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "source: " + ", ".join(f"{k} {v}" for k, v in meta["source"].items()),
        f"machine: {meta['cpu']}, nproc {meta['nproc']}; {pinned}; took {meta['elapsed_s']} s",
    ]
    loads = sorted(r["other_cores"] for r in runs if r.get("other_cores") is not None)
    if loads:
        median, over = loads[len(loads) // 2], sum(x > 0.25 for x in loads)
        meta["other_cores"] = {"median": median, "max": loads[-1], "runs_over_0.25": over}
        lines.append(
            f"interference: other processes took a median {median:.2f} cores "
            f"(max {loads[-1]:.2f}) while cells ran; {over} of {len(loads)} runs over 0.25"
        )
    failed = sum(1 for r in runs if r.get("error"))
    if failed:
        lines.append(f"{failed} run(s) failed or skipped: see 'runs' in the JSON")
    return lines + [f"note: {n}" for n in meta["notes"]]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    matrix, notes = plan(args)
    if not matrix:
        print("nothing to run", file=sys.stderr)
        return 2
    per_repeat = sum(expected_seconds(w, o) for w, o, _ in matrix)
    if args.list:
        for w, o, cell in matrix:
            print(f"{cell.key}  ~{expected_seconds(w, o):.1f} s")
        print(f"{len(matrix)} cells, ~{per_repeat:.0f} s per repeat, x{args.repeat}")
        return 0
    budget = args.budget or (120.0 if args.quick else 1.5 * per_repeat * args.repeat + 60.0)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    client_cpu, server_cpu = cores(args.no_pin)
    pinned = "not pinned"
    if client_cpu is not None:
        pinned = f"clients on core {client_cpu}, server on core {server_cpu}"
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    meta: dict[str, Any] = {
        "date": now.isoformat(),
        "command": " ".join(["python -m bench", *argv]),
        "versions": versions(),
        "source": source_state(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "repeat": args.repeat,
        "seed": seed,
        "quick": args.quick,
        "budget_s": budget,
        "conc": list(args.conc),
        "notes": notes,
    }
    print(
        f"conpool bench, {now:%Y-%m-%d %H:%M} UTC: {len(matrix)} cells x {args.repeat} repeats, "
        f"~{per_repeat * args.repeat:.0f} s; {pinned}; seed {seed}",
        *(f"note: {n}" for n in notes),
        sep="\n",
        file=sys.stderr,
    )
    runs: list[dict[str, Any]] = []
    total = len(matrix) * args.repeat
    with start("echo", cpu=server_cpu, max_seconds=budget + 120.0) as server:
        for r in range(args.repeat):
            for i, item in enumerate(shuffled(matrix, rng)):
                cell = item[2]
                run: dict[str, Any] = {"repeat": r, "order": i, "key": cell.key}
                run["cell"] = asdict(cell)
                runs.append(run)
                if time.monotonic() - started + expected_seconds(item[0], item[1]) > budget:
                    run["error"] = "skipped: over the time budget"
                    continue
                measure(item, run, args, server, client_cpu)
                metrics = run["metrics"] or {}
                shown = run.get("error") or ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                load = run["other_cores"]
                busy = "" if load is None else f" [others {load:.2f} cores]"
                print(f"[{len(runs)}/{total}] {cell.key}: {shown}{busy}", file=sys.stderr)

    summary = summarize(matrix, runs, args.repeat)
    lines, targets = report(matrix, summary)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print("\n".join(header(meta, runs, pinned) + lines))
    out = {
        "meta": meta,
        "runs": runs,
        "cells": {k: {m: asdict(s) for m, s in v.items()} for k, v in summary.cells.items()},
        "ratios": [
            {"label": label, "num": num, "den": den, **asdict(stat)}
            for (label, num, den), stat in summary.ratios.items()
        ],
        "targets": [asdict(t) for t in targets],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    failed = [r["error"] for r in runs if r.get("error")]
    return 1 if any(not e.startswith("skipped") for e in failed) else 0
