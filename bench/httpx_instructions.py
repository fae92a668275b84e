"""Machine instructions per request of the ``httpx`` workload's cells, counted
by callgrind: a measure of a transport's cost that other processes on the
machine do not move (unlike wall-clock and CPU time).

Each cell runs twice under ``valgrind --tool=callgrind`` (the client process
alone; nginx runs outside it): once with ``N`` measured requests, once with
``2 N``, after the same warm-up.  The difference of the two totals over
``N`` is the cost of one request in the steady state, with the start-up,
imports, warm-up and shut-down cancelled out.

    python -m bench.httpx_instructions [--requests 500] [--conc 1,64]
        [--loops uvloop] [--impls conpool,canned]

Under callgrind a client runs some fifty times slower, so keep ``N`` small;
its figures are instructions of the client's CPU (the kernel's work for a
system call is not counted, the call itself is).

``--opcodes`` instead counts Python bytecode instructions per request of the
measured phase in this process (``sys.settrace`` opcode events), by package
(httpx, h11, conpool, anyio, the standard library's modules) and by
function: where a transport's time goes, exactly, whatever the load (C code
such as uvloop's, and the kernel's, is not counted).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from bench import httpx_workload
from bench.httpx_workload import IMPLS, LOOPS, nginx

ROOT = Path(__file__).resolve().parent.parent


def client(impl: str, loop: str, url: str, conc: int, warm: int, n: int) -> None:
    """The client of one run (in the process callgrind watches)."""
    httpx_workload.COUNTS[0] = (warm, n)
    httpx_workload.run_cell(impl, loop, url, conc, 0.0, 0.0)


def instructions(impl: str, loop: str, url: str, conc: int, warm: int, n: int) -> int:
    """Total instructions (callgrind's ``Ir``) of one client run."""
    with tempfile.TemporaryDirectory(prefix="conpool-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-instr=no",
            "--dump-line=no",
            sys.executable,
            "-m",
            "bench.httpx_instructions",
            "--client",
            impl,
            loop,
            url,
            str(conc),
            str(warm),
            str(n),
        ]
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{impl} {loop} C={conc} failed:\n{proc.stderr[-2000:]}")
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in callgrind's output")


def _where(filename: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1].lstrip("0123456789./")
    return filename


def opcodes(impl: str, loop: str, url: str, conc: int, warm: int, n: int, top: int) -> None:
    """Print the bytecode instructions per request of one cell, by package
    and by function (this process, under ``sys.settrace``)."""
    counts: Counter[str] = Counter()
    names: dict[CodeType, str] = {}
    measuring = [False]

    def tracer(frame: FrameType, event: str, _arg: object) -> Any:
        if event == "opcode":
            if measuring[0]:
                code = frame.f_code
                name = names.get(code)
                if name is None:
                    where = _where(code.co_filename)
                    name = names[code] = f"{where}:{code.co_firstlineno}({code.co_qualname})"
                counts[name] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
        return tracer

    # The measured phase is the one between drive()'s two readings of the
    # process time.
    real = time.process_time
    readings = [0]

    def process_time() -> float:
        readings[0] += 1
        measuring[0] = readings[0] == 1
        return real()

    httpx_workload.COUNTS[0] = (warm, n)
    time.process_time = process_time
    sys.settrace(tracer)
    try:
        done, _wall, _cpu = httpx_workload.run_cell(impl, loop, url, conc, 0.0, 0.0)
    finally:
        sys.settrace(None)
        time.process_time = real
    total = sum(counts.values())
    groups: Counter[str] = Counter()
    for name, count in counts.items():
        path = name.split(":", 1)[0]
        top_name = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
        groups[top_name] += count
    print(f"\n{loop} C={conc} {impl}: {total / done:,.0f} bytecode instructions per request")
    for group, count in groups.most_common(12):
        print(f"  {count / done:8,.0f}  {count / total:6.1%}  {group}")
    print(f"  top {top} functions:")
    for name, count in counts.most_common(top):
        print(f"  {count / done:8,.0f}  {count / total:6.1%}  {name}")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--client"]:
        impl, loop, url = args_in[1:4]
        conc, warm, count = (int(a) for a in args_in[4:7])
        client(impl, loop, url, conc, warm, count)
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.httpx_instructions", description=__doc__)
    p.add_argument("--requests", type=int, default=500, help="N (the runs do N and 2 N)")
    p.add_argument("--warm", type=int, default=200, help="warm-up requests of every run")
    p.add_argument("--conc", default="1,64", help="concurrency levels, comma-separated")
    p.add_argument("--loops", default="uvloop", help=",".join(LOOPS))
    p.add_argument("--impls", default="conpool,canned", help=",".join(IMPLS))
    p.add_argument("--opcodes", action="store_true", help="count bytecode instructions, by package")
    p.add_argument("--top", type=int, default=25, help="functions shown with --opcodes")
    args = p.parse_args(args_in)
    concs = [int(c) for c in args.conc.split(",")]
    loops = [lp for lp in args.loops.split(",") if lp]
    impls = [i for i in args.impls.split(",") if i]
    for name in impls:
        if name not in IMPLS:
            p.error(f"unknown implementation {name!r}")
    n = args.requests
    if n < 1 or args.warm < 0:
        p.error("--requests must be >= 1 and --warm >= 0")
    with nginx(connections=4 * max(concs) + 64) as (host, port):
        url = f"http://{host}:{port}/"
        if args.opcodes:
            for loop in loops:
                for conc in concs:
                    for impl in impls:
                        warm = max(args.warm, 2 * conc)
                        opcodes(impl, loop, url, conc, warm, n, args.top)
            return 0
        print(
            f"callgrind instructions per request (N = {n}, warm-up {args.warm}), pid {os.getpid()}"
        )
        for loop in loops:
            for conc in concs:
                for impl in impls:
                    warm = max(args.warm, 2 * conc)
                    one = instructions(impl, loop, url, conc, warm, n)
                    two = instructions(impl, loop, url, conc, warm, 2 * n)
                    print(
                        f"{loop:8s} C={conc:<3d} {impl:14s} {(two - one) / n:12,.0f} instr/req",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
