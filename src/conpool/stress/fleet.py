"""The ``fleet`` scenario: N processes, each with its own pool, sharing one
:class:`conpool.RedisBudget`.

Each process (``python -m conpool.stress.fleet SPEC``) runs the ordinary
scenario loop of :func:`conpool.stress.runner.run_scenario` with a budget,
against the embedded echo server's ``fleet`` port, which counts its
concurrent connections.  The parent starts the processes, starts them
together on one clock (``CLOCK_MONOTONIC`` is the machine's), reads the
server's peak of concurrent connections every sampling interval (every
accept counts: no sample misses a peak), and merges what the processes
measured into one result, with a ``fleet`` part: the server's connections
against the budget line, each process's throughput and share, the budget's
stats and the Redis calls Redis itself counted.

Redis: ``--redis-url URL``, or a ``redis-server`` from PATH started in a
temporary directory on a free loopback port (:class:`RedisProcess`).
Without either the scenario is skipped, with the reason at the top of the report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio

from . import analysis
from .measure import Requests, cpu_delta, cpu_snapshot, machine_snapshot
from .runner import (
    GRACE,
    RUNNERS,
    Progress,
    RunControl,
    Target,
    _buckets,
    _machine_delta,
    _rounded,
    _server_delta,
    log_histogram,
    percentiles,
    run_scenario,
)
from .scenarios import Scenario, register
from .servers import STRESS_ADDRESSES, ServerError, ServerProcess, terminate

__all__ = [
    "DEFAULT_PROCESSES",
    "NAME",
    "OPTIONS",
    "PER_PROCESS_LIMIT",
    "FleetOptions",
    "RedisProcess",
    "budget_limit",
    "run_fleet",
    "unavailable_reason",
]

NAME = "fleet"
DEFAULT_PROCESSES = 4
#: Each process's ``max_connections_per_endpoint``.
PER_PROCESS_LIMIT = 8
#: Seconds a process may take to start (import, join the budget) on a loaded machine.
START_TIMEOUT = 30.0
#: Leases of a process that dies return this long after its last renewal.
LEASE_TTL = 5.0


@dataclass
class FleetOptions:
    """Set by the command line (``--fleet-processes``, ``--redis-url``) before
    the scenarios are listed.

    :ivar redis_url: the Redis the budget uses: the user's, or the one
        :class:`RedisProcess` started (None: not known yet).
    :ivar redis_given: the URL came from ``--redis-url``.
    :ivar backend: the event loop of the processes (the run's ``--backend``).
    """

    processes: int = DEFAULT_PROCESSES
    redis_url: str | None = None
    redis_given: bool = False
    redis_version: str = ""
    backend: str = "asyncio"


OPTIONS = FleetOptions()


def budget_limit(processes: int) -> int:
    """The fleet's limit: well below ``processes x PER_PROCESS_LIMIT``, so the budget binds."""
    return max(1, processes * PER_PROCESS_LIMIT * 3 // 8)


@register
def _scenarios(duration: float, target: bool) -> list[Scenario]:
    if target:
        return []  # the server must count connections: the embedded one only
    n = OPTIONS.processes
    limit = budget_limit(n)
    return [
        Scenario(
            name=NAME,
            title=f"Fleet: {n} processes share a budget of {limit}",
            group="fleet",
            description=(
                f"{n} processes, each with its own pool of at most {PER_PROCESS_LIMIT} "
                f"connections ({n * PER_PROCESS_LIMIT} in all), share one conpool.RedisBudget "
                f"of {limit} connections to one echo server that counts its concurrent "
                "connections: the server must never see more than the budget, and every "
                "process must get its share of the work."
            ),
            port="fleet",
            protocol="echo",
            config={
                "max_connections_per_endpoint": PER_PROCESS_LIMIT,
                "acquire_timeout": 4.0,
            },
            embedded_only=True,
            driver=NAME,
        )
    ]


def unavailable_reason() -> str | None:
    """Why the fleet scenario cannot run here (None: it can)."""
    if importlib.util.find_spec("redis") is None:
        return "needs redis-py for conpool.RedisBudget: pip install 'conpool[redis]'"
    if OPTIONS.redis_url is None and shutil.which("redis-server") is None:
        return (
            "needs a Redis: redis-server is not on PATH (install it, or give --redis-url "
            "redis://HOST:PORT/DB)"
        )
    return None


# ----------------------------------------------------------------------------
# redis-server


class RedisProcess:
    """``redis-server`` in a temporary directory on a free loopback port,
    without persistence; stopped by its PID."""

    HOST = "127.0.0.1"
    START_TIMEOUT = 10.0

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.port = 0
        self.version = ""
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """:raises ServerError: it did not start or answer within ``START_TIMEOUT``."""
        self._dir = tempfile.TemporaryDirectory(prefix="conpool-stress-redis-")
        last = ""
        for _ in range(5):  # another process may take the free port before redis binds it
            self.port = _free_port(self.HOST)
            self._log = open(Path(self._dir.name, "redis.log"), "w+b")
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    *("--bind", self.HOST, "--port", str(self.port)),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--dir", self._dir.name),
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches the parent, which stops it
            )
            deadline = time.monotonic() + self.START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _ping(self.HOST, self.port):
                    self.version = _version(self.binary)
                    return
                time.sleep(0.02)
            last = self._log_text()
            self._stop_process()
        self.stop()
        raise ServerError(f"redis-server did not start: {last or 'no answer to PING'}")

    def _log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace").strip()[-2000:]

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            terminate(proc, 5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._stop_process()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


def _version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return ""


def _redis_commands(url: str) -> dict[str, int]:
    """Calls per command Redis has served so far (INFO commandstats); empty if unreadable."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        info = client.info("commandstats")
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in info.items()
        if isinstance(v, dict) and "calls" in v
    }


#: Commands a client sends (each a round trip); Redis's other counts are of
#: the commands the budget's script runs inside an EVALSHA.
_CLIENT_COMMANDS = ("evalsha", "eval", "script|", "hello", "select", "client|", "ping")


def _client_command(name: str) -> bool:
    return name.startswith(_CLIENT_COMMANDS) or name.endswith("subscribe")


def _redact(url: str) -> str:
    from .._budget import _redact as redact

    return redact(url)


# ----------------------------------------------------------------------------
# One process of the fleet


async def _process(spec: dict[str, Any]) -> None:
    import conpool

    budget = conpool.RedisBudget(
        spec["redis_url"], spec["limit"], namespace=spec["namespace"], lease_ttl=LEASE_TTL
    )
    s = spec["scenario"]
    scenario = Scenario(
        name=s["name"],
        title=s["title"],
        group=s["group"],
        description=s["description"],
        port="target",
        protocol="echo",
        config=s["config"],
    )
    _say("ready")
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    if not line.startswith("go "):
        return  # the parent went away or gave up
    raw: dict[str, Any] = {}
    result = await run_scenario(
        scenario,
        duration=spec["duration"],
        concurrency=spec["concurrency"],
        servers=None,
        target=Target(spec["host"], spec["port"], "echo"),
        control=RunControl(),
        trace_path=spec.get("trace_path"),
        budget=budget,
        start_ns=int(line.split()[1]),
        raw=raw,
    )
    await anyio.to_thread.run_sync(
        _write_json, spec["out"], {"pid": os.getpid(), "result": result, "raw": raw}
    )
    _say("done")


def _write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_run(m: _Member) -> dict[str, Any]:
    if m.proc.returncode != 0 or not os.path.exists(m.out):
        raise ServerError(
            f"fleet process {m.index + 1} exited with status {m.proc.returncode}:\n"
            f"{m._stderr_text()}"
        )
    run: dict[str, Any] = json.loads(Path(m.out).read_text(encoding="utf-8"))
    return run


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of one process: ``python -m conpool.stress.fleet SPEC_JSON``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    backend, options = spec.get("backend", "asyncio"), {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}
    anyio.run(_process, spec, backend=backend, backend_options=options)
    return 0


# ----------------------------------------------------------------------------
# The parent


class _Member:
    """One process of the fleet, started by :func:`run_fleet`."""

    def __init__(self, index: int, spec: dict[str, Any], stderr: IO[str]) -> None:
        self.index = index
        self.out = spec["out"]
        self.stderr = stderr
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conpool.stress.fleet", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

    def expect(self, word: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the line ``word`` (blocking: call it
        from a thread); False when it has not come yet.

        :raises ServerError: the process exited.
        """
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([stdout], [], [], min(left, 0.5))
            if ready:
                line = stdout.readline()
                if not line:
                    raise ServerError(
                        f"fleet process {self.index + 1} exited:\n{self._stderr_text()}"
                    )
                if line.strip() == word:
                    return True

    def _stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().strip()[-3000:]

    def go(self, start_ns: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {start_ns}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """By its PID: close its stdin, then SIGTERM, then SIGKILL."""
        proc = self.proc
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc.poll() is None:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                terminate(proc, 3.0)


async def _call(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def run_fleet(
    scenario: Scenario,
    *,
    duration: float,
    concurrency: int,
    servers: ServerProcess | None,
    target: Target | None,
    control: RunControl,
    progress: Progress | None = None,
    trace_path: str | None = None,
) -> dict[str, Any] | None:
    """Run the fleet scenario (the runner of ``driver="fleet"``).

    :param concurrency: client tasks in all, shared among the processes.
    :param trace_path: the trace of the first process (the others write none).
    :returns: the merged results, or None when it was interrupted.
    :raises ServerError: no Redis, no embedded servers, or a process failed.
    """
    opts = OPTIONS
    if servers is None or "fleet" not in servers.ports:
        raise ServerError("the fleet scenario needs the embedded servers")
    if opts.redis_url is None:
        raise ServerError("the fleet scenario needs a Redis (--redis-url or redis-server on PATH)")
    n = opts.processes
    limit = budget_limit(n)
    per = max(1, concurrency // n)
    namespace = f"conpool-stress-{os.getpid()}-{time.time_ns()}"
    host, port = STRESS_ADDRESSES[0], servers.ports["fleet"]
    interval = min(max(duration / 150.0, 0.01), 0.05)
    with tempfile.TemporaryDirectory(prefix="conpool-fleet-") as tmp:
        members: list[_Member] = []
        errs: list[IO[str]] = []
        try:
            for i in range(n):
                spec = {
                    "redis_url": opts.redis_url,
                    "namespace": namespace,
                    "limit": limit,
                    "host": host,
                    "port": port,
                    "duration": duration,
                    "concurrency": per,
                    "backend": opts.backend,
                    "out": str(Path(tmp, f"process-{i}.json")),
                    "trace_path": trace_path if i == 0 else None,
                    "scenario": {
                        "name": scenario.name,
                        "title": scenario.title,
                        "group": scenario.group,
                        "description": scenario.description,
                        "config": scenario.config,
                    },
                }
                err = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
                errs.append(err)
                members.append(_Member(i, spec, err))
            ready_by = time.monotonic() + START_TIMEOUT
            for m in members:
                # A little at a time, so that a Ctrl-C is not kept waiting.
                while not await _call(m.expect, "ready", 0.5):
                    if control.stop:
                        return None
                    if time.monotonic() > ready_by:
                        raise ServerError(
                            f"fleet process {m.index + 1} was not ready within "
                            f"{START_TIMEOUT:g} s:\n{m._stderr_text()}"
                        )
            redis_before = await _call(_redis_commands, opts.redis_url)
            server_before = await _call(servers.status)
            await _call(servers.peak, "fleet")  # a fresh peak from now on
            cpu_before = (cpu_snapshot(servers.pid), machine_snapshot())
            start_ns = time.monotonic_ns() + 100_000_000
            for m in members:
                m.go(start_ns)
            samples: list[list[float]] = []
            deadline = start_ns + int((duration + GRACE + 10.0) * 1e9)
            while any(m.proc.poll() is None for m in members):
                if control.stop:
                    return None
                if time.monotonic_ns() > deadline:
                    raise ServerError("the fleet processes did not finish in time")
                pk = await _call(servers.peak, "fleet")
                now = time.monotonic_ns()
                if now >= start_ns:
                    samples.append([round((now - start_ns) / 1e9, 4), pk["open"], pk["peak"]])
                if progress is not None:
                    progress(scenario.name, min(max(now - start_ns, 0) / 1e9 / duration, 1.0), 0, 0)
                await anyio.sleep(interval)
            end_ns = time.monotonic_ns()
            pk = await _call(servers.peak, "fleet")
            samples.append([round((end_ns - start_ns) / 1e9, 4), pk["open"], pk["peak"]])
            cpu_after = (cpu_snapshot(servers.pid), machine_snapshot())
            server_after = await _call(servers.status)
            redis_after = await _call(_redis_commands, opts.redis_url)
            runs = [await _call(_read_run, m) for m in members]
        finally:
            for m in members:
                m.stop()
            for stream in errs:
                stream.close()
    wall = (end_ns - start_ns) / 1e9
    counted = {
        k: redis_after.get(k, 0) - redis_before.get(k, 0)
        for k in redis_after
        if k != "info" and redis_after.get(k, 0) - redis_before.get(k, 0) > 0
    }
    # Redis also counts the commands its scripts run: the round trips are the rest.
    calls = {k: v for k, v in counted.items() if _client_command(k)}
    inside = {k: v for k, v in counted.items() if not _client_command(k)}
    return merge(
        scenario,
        runs,
        limit=limit,
        processes=n,
        per_clients=per,
        samples=samples,
        start_ns=start_ns,
        server=_server_delta(server_before, server_after, "fleet"),
        server_cpu=cpu_delta(cpu_before[0], cpu_after[0], wall),
        machine=_machine_delta(cpu_before[1], cpu_after[1]),
        wall_s=wall,
        redis_calls=calls,
        script_commands=inside,
        redis=(
            _redact(opts.redis_url)
            if opts.redis_given
            else f"redis-server {opts.redis_version} started by conpool stress".replace("  ", " ")
        ),
        namespace=namespace,
        backend=opts.backend,
    )


RUNNERS[NAME] = run_fleet


# ----------------------------------------------------------------------------
# Merging the processes' results

_SUMMED_CPU = ("user_s", "system_s", "cpu_s", "cpu_share", "loop_thread_cpu_s", "runqueue_s")


def _sum_cpu(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    present = [p for p in parts if p]
    if not present:
        return None
    out: dict[str, Any] = {}
    for key in _SUMMED_CPU:
        if all(key in p for p in present):
            out[key] = round(sum(p[key] for p in present), 4)
    if all("runqueue_share" in p for p in present):
        # The share of the run each process's loop waited for a CPU, on average.
        out["runqueue_share"] = round(sum(p["runqueue_share"] for p in present) / len(present), 4)
    return out


def _add(into: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            into[k] = into.get(k, 0) + v
        elif isinstance(v, dict):
            _add(into.setdefault(k, {}), v)


def merge(
    scenario: Scenario,
    runs: list[dict[str, Any]],
    *,
    limit: int,
    processes: int,
    per_clients: int,
    samples: list[list[float]],
    start_ns: int,
    server: dict[str, Any] | None,
    server_cpu: dict[str, Any] | None,
    machine: dict[str, Any] | None,
    wall_s: float,
    redis_calls: dict[str, int],
    script_commands: dict[str, int],
    redis: str,
    namespace: str,
    backend: str,
) -> dict[str, Any]:
    """One result from every process's ``{"pid", "result", "raw"}``: the
    shape of any scenario's, plus ``fleet``.  Latencies, the breakdown and
    the throughput are computed over every request of every process; the
    event-loop lag and the tail are those of the process with the slowest
    request, the timeline (and the trace) the first process's."""
    results = [run["result"] for run in runs]
    raws = [run["raw"] for run in runs]
    first = results[0]
    out = dict(first)
    ok = sum(r["requests"]["ok"] for r in results)
    errors = sum(r["requests"]["errors"] for r in results)
    elapsed = max(r["elapsed_s"] for r in results)
    lat_ms = [v / 1e6 for raw in raws for v in raw["latency_ns"]]
    acq_ms = [v / 1e6 for raw in raws for v in raw["acquire_ns"]]
    connect_ms = [v for raw in raws for v in raw["connect_ms"]]
    # Every process's times on the fleet's clock (ns since the common start).
    shifts = [raw["t0_ns"] - start_ns for raw in raws]
    done = [t + s for raw, s in zip(raws, shifts, strict=True) for t in raw["done_ns"]]
    failed = [t + s for raw, s in zip(raws, shifts, strict=True) for t in raw["failed_ns"]]
    ts = dict(first["timeseries"])
    bucket = ts["bucket_interval_s"]
    nbuckets = max(1, math.ceil(elapsed / bucket))
    ts["bucket_s"] = [round((i + 1) * bucket, 4) for i in range(nbuckets)]
    ts["rps"] = [round(c / bucket, 1) for c in _buckets(done, bucket, nbuckets)]
    ts["errors_per_s"] = [round(c / bucket, 1) for c in _buckets(failed, bucket, nbuckets)]
    length = min(len(r["timeseries"]["t_s"]) for r in results)
    ts["t_s"] = ts["t_s"][:length]
    addresses: dict[str, dict[str, list[int]]] = {}
    for r in results:
        for ip, series in r["timeseries"]["addresses"].items():
            into = addresses.setdefault(ip, {k: [0] * length for k in series})
            for k, values in series.items():
                for i in range(min(length, len(values))):
                    into[k][i] += values[i]
    ts["addresses"] = addresses
    ts["waiting"] = [sum(r["timeseries"]["waiting"][i] for r in results) for i in range(length)]

    connections: dict[str, Any] = {}
    close_reasons: Counter[str] = Counter()
    per_address: dict[str, Any] = {}
    for r in results:
        c = r["connections"]
        for k, v in c.items():
            if isinstance(v, int):
                connections[k] = connections.get(k, 0) + v
        close_reasons.update(c["close_reasons"])
        _add(per_address, c["per_address"])
    connections["close_reasons"] = dict(close_reasons.most_common())
    connections["per_address"] = per_address

    lifetimes = []
    for i, (r, s) in enumerate(zip(results, shifts, strict=True)):
        off = (i + 1) * 1_000_000  # connection ids are per process
        for conn_id, ip, start, end, reason in r["lifetimes"]:
            lifetimes.append(
                [
                    conn_id + off,
                    ip,
                    round(start + s / 1e9, 5),
                    None if end is None else round(end + s / 1e9, 5),
                    reason,
                ]
            )
    lifetimes.sort(key=lambda lt: (lt[2], lt[0]))

    error_groups: dict[str, dict[str, Any]] = {}
    for r in results:
        for g in r["errors"]:
            have = error_groups.get(g["message"])
            if have is None:
                error_groups[g["message"]] = dict(g)
            else:
                have["count"] += g["count"]
                have["first_s"] = min(have["first_s"], g["first_s"])
                have["last_s"] = max(have["last_s"], g["last_s"])
    failures: Counter[tuple[str, str]] = Counter()
    for r in results:
        for f in r["connect_failures"]:
            failures[(f["address"], f["detail"])] += f["count"]

    trace = {"events": 0, "dropped": 0, "capacity": first["trace"]["capacity"], "kinds": {}}
    for r in results:
        trace["events"] += r["trace"]["events"]
        trace["dropped"] += r["trace"]["dropped"]
        _add(trace["kinds"], r["trace"]["kinds"])
    trace["kinds"] = dict(sorted(trace["kinds"].items()))

    pool_stats: dict[str, Any] | None = None
    if all(r["pool_stats"] for r in results):
        pool_stats = {}
        for r in results:
            _add(pool_stats, r["pool_stats"])

    # The breakdown over every request of every process.
    req = Requests()
    parts: dict[str, list[int]] = {p: [] for p in (*analysis.PARTS, "total")}
    for raw in raws:
        for ip in raw["addr"]:
            req.column("addr").append(req.address_index(ip))
            req.column("start").append(0)
        for p in parts:
            parts[p].extend(raw["parts_ns"][p])

    budgets = [r.get("budget") or {} for r in results]
    total_budget: dict[str, Any] = {}
    for b in budgets:
        _add(total_budget, b)
    total_budget["available"] = all(b.get("available", True) for b in budgets)
    per_process = []
    for i, (run, r, raw, b) in enumerate(zip(runs, results, raws, budgets, strict=True)):
        lat = percentiles([v / 1e6 for v in raw["latency_ns"]])
        rps = [
            round(c / bucket, 1)
            for c in _buckets([t + shifts[i] for t in raw["done_ns"]], bucket, nbuckets)
        ]
        per_process.append(
            {
                "index": i + 1,
                "pid": run["pid"],
                "requests": r["requests"]["ok"],
                "errors": r["requests"]["errors"],
                "throughput_rps": r["throughput_rps"],
                "share": round(r["requests"]["ok"] / ok, 4) if ok else 0.0,
                "latency_ms": _rounded({"p50": lat["p50"], "p99": lat["p99"]}),
                "created": r["connections"]["created"],
                "max_open": max(
                    (
                        sum(s["active"][k] + s["idle"][k] + s["pending"][k] for s in ad.values())
                        for ad in [r["timeseries"]["addresses"]]
                        for k in range(len(r["timeseries"]["t_s"]))
                    ),
                    default=0,
                ),
                "budget": b,
                "rps": rps,
            }
        )
    shares = [p["share"] for p in per_process]
    peaks = [int(s[2]) for s in samples]
    max_seen = max(peaks, default=0)
    # The tail and the loop lag explain the slowest requests: those of the
    # process that had the slowest one of all.
    slowest = max(range(len(raws)), key=lambda i: max(raws[i]["latency_ns"], default=0))
    notes = list(first.get("notes", []))
    notes.append(
        f"The event-loop lag and the slowest requests are those of process {slowest + 1} "
        "(which had the slowest request of all), the timeline that of process 1; latencies, "
        "the breakdown and the throughput are every process's."
    )
    if max_seen > limit:
        notes.append(
            f"the server saw {max_seen} concurrent connections, more than the budget of {limit}"
        )
    out.update(
        {
            "name": scenario.name,
            "title": scenario.title,
            "group": scenario.group,
            "description": scenario.description,
            "concurrency": per_clients * processes,
            "elapsed_s": round(elapsed, 4),
            "requests": {"ok": ok, "errors": errors, "total": ok + errors},
            "throughput_rps": round(ok / elapsed, 2) if elapsed else 0.0,
            "latency_ms": _rounded(percentiles(lat_ms)),
            "acquire_ms": _rounded(percentiles(acq_ms)),
            "connect_ms": _rounded(percentiles(connect_ms)),
            "histogram": log_histogram({"latency": lat_ms, "acquire": acq_ms}),
            "timeseries": ts,
            "addresses": sorted(addresses) or first["addresses"],
            "connections": connections,
            "lifetimes": lifetimes,
            "connect_failures": [
                {"address": ip, "detail": d, "count": c} for (ip, d), c in failures.most_common()
            ],
            "address_events": sorted(
                (e for r in results for e in r["address_events"]), key=lambda e: e[0]
            ),
            "errors": sorted(error_groups.values(), key=lambda g: (-g["count"], g["first_s"])),
            "trace": trace,
            "pool_stats": pool_stats,
            "server": server,
            "notes": notes,
            "breakdown": analysis.breakdown(req, parts),
            "tail": results[slowest]["tail"],
            "lag": results[slowest]["lag"],
            "waves": results[slowest]["waves"],
            "cpu": {
                "wall_s": round(wall_s, 4),
                "client": _sum_cpu([(r.get("cpu") or {}).get("client") for r in results]),
                "server": server_cpu,
                "machine": machine,
                "cpus": first.get("cpu", {}).get("cpus"),
            },
            "fleet": {
                "processes": processes,
                "clients_per_process": per_clients,
                "per_process_limit": PER_PROCESS_LIMIT,
                "limit": limit,
                "backend": backend,
                "redis": redis,
                "namespace": namespace,
                "lease_ttl_s": LEASE_TTL,
                "server": {
                    "t_s": [s[0] for s in samples],
                    "open": [int(s[1]) for s in samples],
                    "peak": peaks,
                    "max": max_seen,
                },
                "per_process": per_process,
                "bucket_s": ts["bucket_s"],
                "budget": total_budget,
                "redis_calls": dict(sorted(redis_calls.items(), key=lambda kv: -kv[1])),
                "script_commands": sum(script_commands.values()),
                "fairness": round(min(shares) / max(shares), 4) if shares and max(shares) else 0.0,
            },
        }
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
