"""Processes: pinning to a core, file limits, and child processes that say
``PORT <n>`` once they listen and are stopped by their pid."""

from __future__ import annotations

import os
import platform
import resource
import selectors
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pin(cpu: int | None) -> bool:
    """Run on ``cpu`` alone, where the platform allows it."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def cores(no_pin: bool = False) -> tuple[int | None, int | None]:
    """(client core, server core): the first two this process may run on."""
    if no_pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def server_core(client_cpu: int | None) -> int | None:
    """The core for a server a cell starts: the harness's other core (the one
    its echo server is pinned to); None when the client is not pinned."""
    if client_cpu is None or not hasattr(os, "sched_getaffinity"):
        return None
    try:
        allowed = sorted(os.sched_getaffinity(os.getppid()))
    except OSError:
        return None
    others = [c for c in allowed if c != client_cpu]
    return others[0] if others else None


def raise_nofile(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (at most the hard
    limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def status_kb(field: str) -> float:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``), else nan."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def child_env() -> dict[str, str]:
    """The environment of a child: this repository's bench importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; close our ends of its pipes."""
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


def start_listener(
    args: Sequence[str], timeout: float = 15.0
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m ARGS...``, which prints ``PORT <n>`` once it listens; its
    stdin is a pipe, so it stops when we die.  Returns (process, port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"{' '.join(args)} did not start")
        words = proc.stdout.readline().decode().split()
        if len(words) != 2 or words[0] != "PORT":
            raise RuntimeError(f"{' '.join(args)} said {words!r}")
    except BaseException:
        stop(proc)
        raise
    return proc, int(words[1])
