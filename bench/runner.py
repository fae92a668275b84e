"""The runner: ``python -m bench [--quick] [--repeat N] [--out FILE] ...``.

It starts the echo server (its own process, pinned to one core), then for
each repeat runs every cell of the matrix in a fresh client process pinned to
another core, in a shuffled order, one at a time.  Ratios pair the two cells
of the same repeat, so slow drift of a noisy machine cancels out; the table
shows the median and the range over the repeats.  Every client process has a
time limit, and the whole run a time budget: cells that would overrun it are
skipped and reported as missing rather than stretching the run.
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
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Options,
    Stat,
    Summary,
    Target,
    Workload,
    available,
    registry,
    table,
)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_CONC = (1, 16, 64)
# Seconds a client process may need beyond its measured phases: interpreter
# start, imports, dialling, closing.  Generous: a limit, not an estimate.
CELL_SLACK = 30.0
# What a client process costs beyond its phases, for the time estimate.
CELL_OVERHEAD = 0.45
PACKAGES = (
    "conpool",
    "anyio",
    "uvloop",
    "trio",
    "asyncio-connection-pool",
    "generic-connection-pool",
    "httpcore",
    "h11",
    "aiohttp",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    workloads = registry()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run conpool's benchmark matrix and print ratios measured side by side.",
    )
    p.add_argument("--quick", action="store_true", help="short phases, 1 repeat: about 90 s")
    p.add_argument(
        "--repeat", type=int, default=None, help="repeats of the matrix (default 3, --quick 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results.json",
        help="JSON results file (default bench/results.json)",
    )
    p.add_argument(
        "--workload",
        action="append",
        choices=list(workloads),
        help="only these workloads (repeatable; default all)",
    )
    p.add_argument("--impl", action="append", help="only these implementations (repeatable)")
    p.add_argument("--loop", action="append", choices=LOOPS, help="only these loops (repeatable)")
    p.add_argument(
        "--conc",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=DEFAULT_CONC,
        help="concurrency levels, comma-separated (default 1,16,64)",
    )
    p.add_argument("--duration", type=float, help="seconds measured per phase (all workloads)")
    p.add_argument("--warmup", type=float, help="seconds of warmup per phase (all workloads)")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run; cells past it are skipped "
        "(default: 120 with --quick, else 1.5x the estimate + 60)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each cell, wait up to S seconds for other processes to use under "
        "--quiet-cores (the time counts against --budget; default 0: do not wait)",
    )
    p.add_argument("--quiet-cores", type=float, default=0.25, help="see --quiet-wait")
    p.add_argument("--list", action="store_true", help="print the matrix and exit")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if any(c < 1 for c in args.conc):
        p.error("--conc values must be positive")
    return args


def cores(no_pin: bool) -> tuple[int | None, int | None]:
    """(client core, server core): the first two this process may run on."""
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_state() -> dict[str, str]:
    """Which conpool was measured: the commit, and a digest of src/ as it is
    (the work tree may differ from the commit)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", ""
    return {
        "commit": head or "unknown",
        "src_modified": "yes" if dirty else "no",
        "src_sha256": digest.hexdigest()[:16],
    }


def machine_busy() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux), else None."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used (Linux), else None."""
    try:
        after = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(after[11]) + int(after[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Interference:
    """How much CPU other processes took while one cell ran: the machine's
    busy time minus the client's and the server's, in cores."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.t0 = time.monotonic()
        self.busy0 = machine_busy()
        self.server0 = process_cpu(server_pid)
        self.client0 = children_cpu()

    def cores(self) -> float | None:
        busy1, server1 = machine_busy(), process_cpu(self.server_pid)
        if None in (self.busy0, busy1, self.server0, server1):
            return None
        assert busy1 is not None and self.busy0 is not None
        assert server1 is not None and self.server0 is not None
        ours = (children_cpu() - self.client0) + (server1 - self.server0)
        wall = time.monotonic() - self.t0
        return max(0.0, (busy1 - self.busy0 - ours) / wall) if wall > 0 else None


def wait_for_quiet(server_pid: int, limit: float, threshold: float) -> float | None:
    """Wait up to ``limit`` seconds until other processes use less than
    ``threshold`` cores (sampled over 0.25 s).  Returns the last sample."""
    deadline = time.monotonic() + limit
    while True:
        probe = Interference(server_pid)
        time.sleep(0.25)
        load = probe.cores()
        if load is None or load < threshold or time.monotonic() >= deadline:
            return load


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class EchoServer:
    """The server process, stopped by its pid."""

    def __init__(self, cpu: int | None, max_seconds: float) -> None:
        cmd = [sys.executable, "-m", "bench.server", "--host", HOST]
        cmd += ["--max-seconds", str(max_seconds)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=ROOT
        )
        self.port = self._read_port(15.0)

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.stop()
                raise RuntimeError("the echo server did not start")
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"the echo server said {line!r}")
        return int(line[1])

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


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
        result = json.loads(lines[-1])
        metrics = {str(k): float(v) for k, v in result["metrics"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"bad output {lines[-1]!r}: {exc}"
    return metrics, None


def plan(args: argparse.Namespace) -> tuple[list[tuple[Workload, Options, Cell]], list[str]]:
    """Every cell to run, with its workload and options; and what was left out."""
    out = []
    missing: set[str] = set()
    for name, w in registry().items():
        if args.workload and name not in args.workload:
            continue
        duration, warmup = w.timing(args.quick)
        opts = Options(
            duration=args.duration if args.duration is not None else duration,
            warmup=args.warmup if args.warmup is not None else warmup,
            conc=tuple(args.conc),
        )
        for cell in w.cells(opts):
            if args.impl and cell.impl not in args.impl:
                continue
            if args.loop and cell.loop not in args.loop:
                continue
            absent = [x for x in (cell.loop, cell.impl) if not available(x)]
            if absent:
                missing.update(absent)
                continue
            out.append((w, opts, cell))
    notes = [f"{m} is not installed: its cells were left out" for m in sorted(missing)]
    return out, notes


def shuffled(
    matrix: list[tuple[Workload, Options, Cell]], rng: random.Random
) -> list[tuple[Workload, Options, Cell]]:
    """The matrix in a random order that keeps each group together: groups in
    random order, cells in random order within their group."""
    groups: dict[str, list[tuple[Workload, Options, Cell]]] = {}
    for item in matrix:
        groups.setdefault(item[0].group(item[2]), []).append(item)
    order = list(groups.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    return [item for group in order for item in group]


def expected_seconds(w: Workload, opts: Options) -> float:
    return w.phases() * (opts.warmup + opts.duration) + CELL_OVERHEAD


def summarize(
    matrix: list[tuple[Workload, Options, Cell]], runs: list[dict[str, Any]], repeats: int
) -> Summary:
    per_repeat: dict[int, dict[str, dict[str, float]]] = {}
    for run in runs:
        if run.get("metrics") is not None:
            per_repeat.setdefault(run["repeat"], {})[run["key"]] = run["metrics"]
    summary = Summary(repeats=repeats)
    values: dict[str, dict[str, list[float]]] = {}
    for by_key in per_repeat.values():
        for key, metrics in by_key.items():
            for metric, v in metrics.items():
                values.setdefault(key, {}).setdefault(metric, []).append(v)
    summary.cells = {
        key: {m: Stat.of(vs) for m, vs in metrics.items()} for key, metrics in values.items()
    }
    workloads = {w.name: w for w, _, _ in matrix}
    for name, w in workloads.items():
        cells = [c for ww, _, c in matrix if ww.name == name]
        for ratio in w.ratios(cells):
            paired = [
                by_key[ratio.num.key][ratio.metric] / by_key[ratio.den.key][ratio.metric]
                for by_key in per_repeat.values()
                if ratio.num.key in by_key and ratio.den.key in by_key
            ]
            if paired:
                summary.ratios[(ratio.label, ratio.num.key, ratio.den.key)] = Stat.of(paired)
    return summary


def report(
    matrix: list[tuple[Workload, Options, Cell]], summary: Summary
) -> tuple[list[str], list[Target]]:
    lines: list[str] = []
    targets: list[Target] = []
    seen: list[Workload] = []
    for w, _, _ in matrix:
        if w not in seen:
            seen.append(w)
    for w in seen:
        cells = [c for ww, _, c in matrix if ww is w]
        opts = next(o for ww, o, _ in matrix if ww is w)
        lines += ["", f"== {w.title} ({opts.duration:g} s per phase, warmup {opts.warmup:g} s)"]
        lines += w.report(summary, cells)
        targets += w.targets(summary, cells)
    if targets:
        lines += ["", "== Targets: medians by wall-clock time and by client CPU time", ""]
        rows = [
            [
                t.what,
                t.goal or "(none)",
                "-" if t.wall is None else f"{t.wall:.2f}",
                verdict(t.ok_wall),
                "-" if t.cpu is None else f"{t.cpu:.2f}",
                verdict(t.ok_cpu),
            ]
            for t in targets
        ]
        lines += table(["check", "goal", "wall", "", "cpu", ""], rows)
    return lines, targets


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "ok" if ok else "MISSED"


def main(argv: Sequence[str] | None = None) -> int:
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

    if args.budget is None:
        args.budget = 120.0 if args.quick else 1.5 * per_repeat * args.repeat + 60.0
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    client_cpu, server_cpu = cores(args.no_pin)
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    meta: dict[str, Any] = {
        "date": now.isoformat(),
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
        "budget_s": args.budget,
        "conc": list(args.conc),
        "notes": notes,
    }
    pinned = (
        f"clients on core {client_cpu}, server on core {server_cpu}"
        if client_cpu is not None
        else "not pinned"
    )
    print(
        f"conpool bench, {now:%Y-%m-%d %H:%M} UTC: {len(matrix)} cells x {args.repeat} repeats, "
        f"~{per_repeat * args.repeat:.0f} s; {pinned}; seed {seed}",
        file=sys.stderr,
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    server = EchoServer(server_cpu, args.budget + 120.0)
    try:
        total = len(matrix) * args.repeat
        done = 0
        for r in range(args.repeat):
            order = shuffled(matrix, rng)
            for i, (w, opts, cell) in enumerate(order):
                done += 1
                run: dict[str, Any] = {"repeat": r, "order": i, "key": cell.key}
                run["cell"] = asdict(cell)
                need = expected_seconds(w, opts)
                if time.monotonic() - started + need > args.budget:
                    run["error"] = "skipped: over the time budget"
                    runs.append(run)
                    continue
                if args.quiet_wait > 0:
                    waited = time.monotonic()
                    wait_for_quiet(server.proc.pid, args.quiet_wait, args.quiet_cores)
                    run["quiet_wait_s"] = round(time.monotonic() - waited, 2)
                spec = CellSpec(cell, HOST, server.port, opts.duration, opts.warmup, client_cpu)
                t0 = time.monotonic()
                others = Interference(server.proc.pid)
                metrics, error = run_cell(spec, need + CELL_SLACK)
                run["wall_s"] = round(time.monotonic() - t0, 3)
                load = others.cores()
                run["other_cores"] = None if load is None else round(load, 3)
                run["metrics"] = metrics
                if error is not None:
                    run["error"] = error
                runs.append(run)
                shown = error or ", ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items())
                busy = "" if load is None else f" [others {load:.2f} cores]"
                print(f"[{done}/{total}] {cell.key}: {shown}{busy}", file=sys.stderr)
    finally:
        server.stop()

    summary = summarize(matrix, runs, args.repeat)
    lines, targets = report(matrix, summary)
    skipped = [r for r in runs if r.get("error")]
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    header = [
        f"conpool bench  {meta['date']}  {args.repeat} repeat(s), shuffled, seed {seed}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "source: " + ", ".join(f"{k} {v}" for k, v in meta["source"].items()),
        f"machine: {meta['cpu']}, nproc {meta['nproc']}; {pinned}; took {meta['elapsed_s']} s",
    ]
    loads = sorted(r["other_cores"] for r in runs if r.get("other_cores") is not None)
    if loads:
        meta["other_cores"] = {
            "median": round(loads[len(loads) // 2], 3),
            "max": round(loads[-1], 3),
            "runs_over_0.25": sum(x > 0.25 for x in loads),
        }
        header.append(
            f"interference: other processes took a median {loads[len(loads) // 2]:.2f} cores "
            f"(max {loads[-1]:.2f}) while cells ran; "
            f"{meta['other_cores']['runs_over_0.25']} of {len(loads)} runs over 0.25"
        )
    if skipped:
        header.append(f"{len(skipped)} run(s) failed or skipped: see 'runs' in the JSON")
    header += [f"note: {n}" for n in notes]
    print("\n".join(header + lines))

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nJSON: {args.out}")
    failed = any(not r.get("error", "skipped").startswith("skipped") for r in runs)
    return 1 if failed else 0
