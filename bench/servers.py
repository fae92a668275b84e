"""Servers that a cell starts for itself, in their own process, on the other core.

The runner's echo server (:mod:`bench.server`) listens on one address.  Some
workloads need more: an HTTP/1.1 keep-alive server, or echo listeners on
many loopback addresses holding thousands of connections.  A cell starts
them with :func:`start` (a context manager that stops the process by its pid)
and they run:

* ``http``: nginx when its binary is installed (``worker_processes 1``, no
  master process, no access log, a fixed ``200`` with a ``Content-Length``
  body, unlimited keep-alive), else ``python -m bench.servers http``: an
  ``asyncio.Protocol`` on uvloop that answers every request head
  (``\\r\\n\\r\\n``) with the same fixed response;
* ``echo``: ``python -m bench.servers echo --host A --host B ...``, the echo
  protocol of :mod:`bench.server` on every given address, one port for all.

Each server is pinned to the core the runner gave its own server (the core
that is not the client's), raises its file limit for the connections it
will hold, prints ``PORT <n>`` once it listens, and stops on SIGTERM, when its
stdin closes, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cell import pin
from bench.server import Echo, stop_signal

__all__ = ["BODY", "Running", "raise_nofile", "server_core", "start"]

ROOT = Path(__file__).resolve().parent.parent
# The fixed response body: 64 bytes, like the echo workload's message.
BODY = b"conpool bench: 64 bytes of a fixed HTTP/1.1 keep-alive response\n"
assert len(BODY) == 64
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


def raise_nofile(want: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``want`` (at most the
    hard limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def server_core(client_cpu: int | None) -> int | None:
    """The core for a server started by a cell: the runner's second core
    (the one its own echo server is pinned to), as :func:`bench.runner.cores`
    chose it from the runner's affinity; None when the client is not pinned."""
    if client_cpu is None or not hasattr(os, "sched_getaffinity"):
        return None
    try:
        allowed = sorted(os.sched_getaffinity(os.getppid()))
    except OSError:
        return None
    others = [c for c in allowed if c != client_cpu]
    return others[0] if others else None


# -- the server side: python -m bench.servers {http,echo} ---------------------------


class Http(asyncio.Protocol):
    """Answers every request head with :data:`RESPONSE`.  Only for requests
    without a body (GET); pipelined requests are answered in order."""

    __slots__ = ("tail", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        n = data.count(b"\r\n\r\n")
        if n:
            self.transport.write(RESPONSE * n)
            self.tail = data[data.rindex(b"\r\n\r\n") + 4 :]
        else:
            self.tail = data
        if len(self.tail) > 65536:
            self.transport.close()

    def eof_received(self) -> bool:
        return False


async def _serve(kind: str, hosts: Sequence[str], port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = stop_signal(max_seconds)
    factory = Http if kind == "http" else Echo
    servers = []
    try:
        # One port on every address: bind the first at `port` (0: any), then
        # the others at the same port; start over if another process has it.
        for _ in range(20):
            try:
                first = await loop.create_server(factory, hosts[0], port, backlog=4096)
                bound = first.sockets[0].getsockname()[1]
                servers = [first]
                for host in hosts[1:]:
                    servers.append(await loop.create_server(factory, host, bound, backlog=4096))
                break
            except OSError:
                for s in servers:
                    s.close()
                servers = []
                if port:
                    raise
        else:
            raise OSError("no port free on every address")
        print(f"PORT {bound}", flush=True)
        await stop
    finally:
        for s in servers:
            s.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["http", "echo"])
    parser.add_argument("--host", action="append", help="address to listen on (repeatable)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--nofile", type=int, default=0, help="raise RLIMIT_NOFILE to this")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    pin(args.cpu)
    if args.nofile:
        raise_nofile(args.nofile)
    hosts = args.host or ["127.0.0.1"]
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args.kind, hosts, args.port, args.max_seconds))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(args.kind, hosts, args.port, args.max_seconds))
    return 0


# -- the client side: start one, use it, stop it by its pid ----------------------------


@dataclass(frozen=True)
class Running:
    """A started server: where it listens, and what it is."""

    hosts: tuple[str, ...]
    port: int
    name: str  # "nginx 1.22.1" or "python-uvloop"
    pid: int


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
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


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _nginx_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        return "nginx"
    return out.strip().rsplit("/", 1)[-1] if "/" in out else "nginx"


def _nginx_config(d: Path, hosts: Sequence[str], port: int, connections: int) -> str:
    listen = "\n        ".join(f"listen {h}:{port} backlog=4096;" for h in hosts)
    body = BODY.decode().replace("\n", "\\n")
    return f"""\
worker_processes 1;
worker_rlimit_nofile {connections + 64};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    server {{
        {listen}
        location / {{ return 200 "{body}"; }}
    }}
}}
"""


@contextlib.contextmanager
def _nginx(
    binary: str, hosts: Sequence[str], cpu: int | None, connections: int
) -> Iterator[Running]:
    with tempfile.TemporaryDirectory(prefix="conpool-bench-nginx-") as tmp:
        d = Path(tmp)
        for attempt in range(5):
            port = _free_port(hosts[0])
            conf = d / "nginx.conf"
            conf.write_text(_nginx_config(d, hosts, port, connections))
            argv = [binary, "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")]
            # No master process: the pid we start is the one worker, pinned
            # by sched_setaffinity and stopped by SIGTERM like the others.
            argv += ["-g", "daemon off; master_process off;"]
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
            )
            try:
                deadline = time.monotonic() + 5.0
                while proc.poll() is None and time.monotonic() < deadline:
                    if _can_connect(hosts[0], port):
                        break
                    time.sleep(0.01)
                if proc.poll() is not None:
                    if attempt < 4:
                        continue  # the port was taken meanwhile: another one
                    log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
                    raise RuntimeError(f"nginx exited {proc.returncode}: {log.strip()[-300:]}")
                yield Running(tuple(hosts), port, f"nginx {_nginx_version(binary)}", proc.pid)
                return
            finally:
                _stop(proc)
        raise RuntimeError("nginx did not start")


@contextlib.contextmanager
def _python(
    kind: str, hosts: Sequence[str], cpu: int | None, connections: int, max_seconds: float
) -> Iterator[Running]:
    cmd = [sys.executable, "-m", "bench.servers", kind, "--max-seconds", str(max_seconds)]
    cmd += [f"--host={h}" for h in hosts]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if connections > 512:
        cmd += ["--nofile", str(connections + 256)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env(), cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(15.0):
                raise RuntimeError(f"the {kind} server did not start")
        words = proc.stdout.readline().decode().split()
        if len(words) != 2 or words[0] != "PORT":
            raise RuntimeError(f"the {kind} server said {words!r}")
        name = "python-uvloop" if _has_uvloop() else "python-asyncio"
        yield Running(tuple(hosts), int(words[1]), name, proc.pid)
    finally:
        _stop(proc)


def _has_uvloop() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def start(
    kind: str,
    hosts: Sequence[str] = ("127.0.0.1",),
    *,
    cpu: int | None = None,
    connections: int = 1024,
    max_seconds: float = 600.0,
    prefer_nginx: bool = True,
) -> contextlib.AbstractContextManager[Running]:
    """Start a server of ``kind`` ("http" or "echo") on ``hosts`` (one port
    for all), pinned to ``cpu``, able to hold ``connections``; a context
    manager yielding :class:`Running`, that stops the process on exit."""
    if kind == "http" and prefer_nginx:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if binary is not None:
            return _nginx(binary, hosts, cpu, connections)
    return _python(kind, hosts, cpu, connections, max_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
