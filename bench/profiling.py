"""Where the time of one cell goes: ``python -m bench.profiling``.

Runs one cell of the matrix (by default the uncontended acquire + release on
uvloop) in this process under a profiler, against the bench's echo server,
and prints the functions that cost the most, per operation:

* ``--tool cprofile`` (default): deterministic; every function's own time
  (tottime) and cumulative time divided by the number of operations.  Its
  per-call overhead inflates small functions, so read the shares, not the
  absolute microseconds.
* ``--tool pyinstrument``: statistical, low overhead; its call tree.
* ``--tool opcodes``: Python bytecode instructions per operation, by function
  and in total (``sys.settrace`` opcode events).  Exact and independent of
  the machine's noise: what a change to the hot path adds or removes, and
  how much of an operation is conpool's own code.  Slow (the cell runs about
  fifty times slower under the tracer); it counts every operation, warmup
  included, and apart the operations of the measured phases alone.
* ``--tool callgrind``: machine instructions per operation, counted by
  ``valgrind --tool=callgrind`` around N operations after a warmup
  (:mod:`bench.instructions`): the C-level work opcodes do not show
  (attribute lookups, calls, the loop), exact whatever the load.  Its
  workloads are its own (``pair``, ``lease``, ``contended`` over ``yield``,
  ``echo`` against ``raw``), on every loop, for the ``conpool`` that
  ``PYTHONPATH`` gives: run it on two trees to compare them.

Examples::

    python -m bench.profiling
    python -m bench.profiling --workload contended --loop asyncio --conc 64
    python -m bench.profiling --workload echo --loop uvloop --conc 16 --tool pyinstrument
    python -m bench.profiling --workload contended --conc 16 --tool opcodes
    python -m bench.profiling --tool callgrind                      # every op, every loop
    PYTHONPATH=../base/src python -m bench.profiling --tool callgrind --op pair --loop uvloop
"""

from __future__ import annotations

import argparse
import cProfile
import dis
import importlib
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from bench import timing
from bench._internals import LEASE_EXIT_ANCHOR, RELEASE_ANCHOR
from bench.base import LOOPS, Cell, CellSpec, Metrics
from bench.harness import HOST
from bench.procs import ROOT, child_env, cores, pin
from bench.registry import WORKLOADS
from bench.servers import start


def _profile_cprofile(run: Callable[[], Metrics], anchor: str | None, top: int) -> Metrics:
    prof = cProfile.Profile()
    metrics = prof.runcall(run)
    entries = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in entries.items():
        rows.append((tottime, cumtime, ncalls, f"{_short(filename)}:{line}({func})"))
    rows.sort(reverse=True)
    # Operations: the calls of the anchor function (warmup included, like the
    # profile), else the cell's own count of the measured phase.
    ops_metric = "pairs" if "pairs" in metrics else "requests"
    ops = metrics.get(ops_metric, 0.0)
    source = f"the cell's {ops_metric} (measured phase only)"
    if anchor is not None:
        found = [r for r in rows if re.search(anchor, r[3])]
        if found:
            ops, source = float(found[0][2]), f"calls of {found[0][3]}"
    total = sum(r[0] for r in rows)
    print(f"\ncProfile: {ops:.0f} operations, counted as {source}")
    print(f"{'own µs/op':>10} {'share':>6} {'cum µs/op':>10} {'calls/op':>9}  function")
    per = 1e6 / ops if ops else 0.0
    for tottime, cumtime, ncalls, name in rows[:top]:
        print(
            f"{tottime * per:10.3f} {tottime / total:6.1%} {cumtime * per:10.3f} "
            f"{ncalls * per / 1e6:9.2f}  {name}"
        )
    return metrics


def _profile_pyinstrument(run: Callable[[], Metrics], interval: float) -> Metrics:
    pyinstrument = importlib.import_module("pyinstrument")
    profiler = pyinstrument.Profiler(interval=interval, async_mode="disabled")
    profiler.start()
    try:
        metrics = run()
    finally:
        profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    return metrics


def _profile_opcodes(run: Callable[[], Metrics], anchor: str, top: int) -> Metrics:
    """Count bytecode instructions per function, and the anchor's calls."""
    ops: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    # The same, counted only within the measured phases: the steady state,
    # without the one-off setup spread over however many operations fit.
    measured_ops: Counter[str] = Counter()
    measured_calls: Counter[str] = Counter()
    measuring = [False]
    names: dict[CodeType, str] = {}
    starts: dict[CodeType, int] = {}

    def name_of(frame: FrameType) -> str:
        code = frame.f_code
        name = names.get(code)
        if name is None:
            name = f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_qualname})"
            names[code] = name
        return name

    def first_entry(frame: FrameType) -> bool:
        # A coroutine's every resumption is a "call" event too; its first
        # entry is the one at the code's first RESUME instruction.
        code = frame.f_code
        start = starts.get(code)
        if start is None:
            resumes = [i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"]
            start = starts[code] = resumes[0] if resumes else 0
        return frame.f_lasti <= start

    def tracer(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "opcode":
            name = name_of(frame)
            ops[name] += 1
            if measuring[0]:
                measured_ops[name] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
            if first_entry(frame):
                name = name_of(frame)
                calls[name] += 1
                if measuring[0]:
                    measured_calls[name] += 1
        return tracer

    def phase(started: bool) -> None:
        measuring[0] = started

    timing.PHASE_HOOKS.append(phase)
    sys.settrace(tracer)
    try:
        metrics = run()
    finally:
        sys.settrace(None)
        timing.PHASE_HOOKS.remove(phase)
    anchored = [(n, c) for n, c in calls.items() if re.search(anchor, n)]
    if not anchored:
        raise SystemExit(f"no call of a function matching --anchor {anchor!r} was traced")
    anchor_name, n = max(anchored, key=lambda nc: nc[1])
    total = sum(ops.values())
    own = sum(v for k, v in ops.items() if k.startswith("conpool/"))
    harness = sum(v for k, v in ops.items() if "/bench/" in k)
    print(f"\nopcodes: {n} operations, counted as first calls of {anchor_name}")
    print(f"{'instr/op':>9} {'share':>6} {'calls/op':>9}  function")
    for name, count in ops.most_common(top):
        print(f"{count / n:9.1f} {count / total:6.1%} {calls[name] / n:9.2f}  {name}")
    print(f"{own / n:9.1f}  in conpool's modules, per operation")
    print(f"{harness / n:9.1f}  in the benchmark's own code (and its other phases)")
    print(f"{(total - own - harness) / n:9.1f}  elsewhere (the loop, anyio, imports)")
    m = measured_calls[anchor_name]
    if m:
        mine = sum(v for k, v in measured_ops.items() if k.startswith("conpool/"))
        print(
            f"{mine / m:9.1f}  in conpool's modules, per operation of the measured phases "
            f"({m} operations; the setup and warmup left out)"
        )
    return metrics


# (operation, C) measured by --tool callgrind, with what each is reported over.
CALLGRIND_OPS: dict[str, tuple[int, str | None]] = {
    "pair": (1, None),
    "lease": (1, None),
    "contended": (16, "yield"),
    "echo": (16, "raw"),
    "sync-echo": (1, "sync-raw"),
}


def _instructions(op: str, loop: str, conc: int, warmup: int, n: int, port: int) -> float:
    """Machine instructions per operation of ``n`` operations after ``warmup``."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--tool callgrind needs valgrind (Debian's valgrind package)")
    with tempfile.TemporaryDirectory(prefix="conpool-callgrind-") as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            valgrind,
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.instructions",
            op,
            loop,
            str(conc),
            str(warmup),
            str(n),
            str(port),
        ]
        done = subprocess.run(
            cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=1800
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        # Dump 1: startup and warmup; dump 2: the n operations; the rest: exit.
        dumps = sorted(f for f in os.listdir(tmp) if f.startswith("cg.out."))
        if len(dumps) != 2:
            raise SystemExit(f"expected two dumps at the marks, got {dumps}")
        with open(os.path.join(tmp, f"{out}.2")) as f:
            for line in f:
                if line.startswith("summary:"):
                    return int(line.split()[1]) / n
    raise SystemExit("no summary line in callgrind's dump")


def _profile_callgrind(
    ops: list[str], loops: list[str], conc: int | None, n: int, over: bool = True
) -> None:
    import conpool

    print(f"conpool: {os.path.dirname(conpool.__file__)}")
    print(f"machine instructions per operation (valgrind --tool=callgrind), {n} operations")
    print(
        f"{'op':<10} {'loop':<8} {'C':>3} {'instr/op':>10} {'over':>8} {'instr/op':>10} {'net':>10}"
    )
    _, server_cpu = cores()
    with start("echo", cpu=server_cpu, max_seconds=3600.0) as server:
        for op in ops:
            default_conc, base = CALLGRIND_OPS[op]
            c = conc if conc is not None and default_conc > 1 else default_conc
            warmup = max(200, 20 * c)
            for loop in loops:
                mine = _instructions(op, loop, c, warmup, n, server.port)
                line = f"{op:<10} {loop:<8} {c:>3} {mine:10.0f}"
                if base is not None and over:
                    theirs = _instructions(base, loop, c, warmup, n, server.port)
                    line += f" {base:>8} {theirs:10.0f} {mine - theirs:10.0f}"
                print(line, flush=True)


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiling")
    p.add_argument("--workload", choices=list(WORKLOADS), default="acquire")
    p.add_argument("--impl", default="conpool")
    p.add_argument(
        "--loop",
        action="append",
        choices=LOOPS,
        help="the loop (default uvloop; callgrind: repeatable, default all)",
    )
    p.add_argument("--conc", type=int, default=None, help="C (default: 1, contended 64)")
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds (per phase)")
    p.add_argument(
        "--tool", choices=("cprofile", "pyinstrument", "opcodes", "callgrind"), default="cprofile"
    )
    p.add_argument(
        "--op",
        action="append",
        choices=list(CALLGRIND_OPS),
        help="callgrind: the operations (repeatable; default all)",
    )
    p.add_argument("--ops", type=int, default=5000, help="callgrind: operations counted")
    p.add_argument(
        "--no-over",
        action="store_true",
        help="callgrind: leave out what contended and echo are measured over (yield, raw: "
        "they do not depend on conpool's sources)",
    )
    p.add_argument("--top", type=int, default=30, help="functions shown (cProfile, opcodes)")
    p.add_argument(
        "--anchor",
        default=None,
        help="regex naming the function whose calls count the operations (cProfile and "
        "opcodes; default for conpool's pairs: Pool.release, a coroutine that never "
        "suspends, as cProfile counts every resumption as a call; for opcodes on "
        "conpool's requests (echo, http, tracing): the lease's __aexit__)",
    )
    p.add_argument("--interval", type=float, default=0.0001, help="pyinstrument sampling (s)")
    args = p.parse_args(argv)
    if args.tool == "callgrind":
        _profile_callgrind(
            args.op or list(CALLGRIND_OPS),
            args.loop or list(LOOPS),
            args.conc,
            args.ops,
            not args.no_over,
        )
        return 0
    conc = args.conc or (64 if args.workload == "contended" else 1)
    anchor = args.anchor
    if anchor is None and args.impl in ("conpool", "pair-off", "pair-on"):
        if args.workload in ("acquire", "contended", "tracing"):
            anchor = RELEASE_ANCHOR
    if anchor is None and args.tool == "opcodes":
        if args.impl not in ("conpool", "echo-on", "echo-off"):
            raise SystemExit("--tool opcodes needs --anchor for this implementation")
        anchor = LEASE_EXIT_ANCHOR
    for mod in ("anyio", "conpool", "uvloop", "trio", "bench.peers"):
        try:
            importlib.import_module(mod)  # keep imports out of the profile
        except ImportError:
            pass
    client_cpu, server_cpu = cores()
    pin(client_cpu)
    if args.loop is not None and len(args.loop) > 1:
        raise SystemExit("--loop is repeatable only with --tool callgrind")
    cell = Cell(args.workload, args.impl, args.loop[-1] if args.loop else "uvloop", conc)
    with start("echo", cpu=server_cpu, max_seconds=args.seconds * 4 + 120.0) as server:
        spec = CellSpec(cell, HOST, server.port, args.seconds, 0.2, client_cpu)

        def run() -> Metrics:
            return WORKLOADS[args.workload].run(spec)

        if args.tool == "cprofile":
            metrics = _profile_cprofile(run, anchor, args.top)
        elif args.tool == "opcodes":
            assert anchor is not None
            metrics = _profile_opcodes(run, anchor, args.top)
        else:
            metrics = _profile_pyinstrument(run, args.interval)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"\n{cell.key} under {args.tool}: {shown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
