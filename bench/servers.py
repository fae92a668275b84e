"""The servers the clients talk to, each in its own process on the other core.

* ``echo``: an ``asyncio.Protocol`` that writes back what it reads, on every
  given address (one port for all): the harness's server for the whole run,
  and the many-address listeners of ``scale`` and ``hold``;
* ``http``: nginx when its binary is installed (one worker, no master, no
  access log, a fixed ``200`` with a 64-byte ``Content-Length`` body,
  unlimited keep-alive), else a Protocol that answers every request head
  with that same response.

``python -m bench.servers {echo,http} --host A --host B ...`` runs on uvloop
when installed, prints ``PORT <n>`` once it listens, and stops on SIGTERM,
when its stdin closes, or after ``--max-seconds``.  :func:`start` starts one
as a context manager that stops it by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from bench.procs import pin, raise_nofile, start_listener, stop

BODY = b"conpool bench: 64 bytes of a fixed HTTP/1.1 keep-alive response\n"
assert len(BODY) == 64
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


class Http(Echo):
    """Answers every request head (GET, no body) with :data:`RESPONSE`,
    pipelined requests in order."""

    __slots__ = ("tail",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
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


def _stop_signal(max_seconds: float) -> asyncio.Future[None]:
    """Done on SIGTERM or SIGINT, after ``max_seconds``, or when stdin (a pipe
    from the process that started this one) reaches EOF."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, finish)
    loop.add_signal_handler(signal.SIGINT, finish)
    loop.call_later(max_seconds, finish)
    stdin = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(stdin, 4096):  # EOF: whoever started us is gone
            loop.remove_reader(stdin)
            finish()

    if stat.S_ISFIFO(os.fstat(stdin).st_mode):
        loop.add_reader(stdin, readable)
    return done


async def _serve(kind: str, hosts: Sequence[str], port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    done = _stop_signal(max_seconds)
    factory = Http if kind == "http" else Echo
    servers: list[asyncio.Server] = []
    try:
        # One port on every address: bind the first (0: any port), then the
        # others at the same port; start over if another process has it.
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
        await done
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
    serve = _serve(args.kind, args.host or ["127.0.0.1"], args.port, args.max_seconds)
    if importlib.util.find_spec("uvloop") is None:
        asyncio.run(serve)
    else:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve)
    return 0


# -- the client side: start one, use it, stop it by its pid --------------------------


def addresses(prefix: str, n: int) -> list[str]:
    """``n`` loopback addresses ``prefix.1`` .. ``prefix.n`` (n <= 254) for
    listeners on many addresses."""
    return [f"{prefix}.{i}" for i in range(1, n + 1)]


@dataclass(frozen=True)
class Running:
    hosts: tuple[str, ...]
    port: int
    name: str  # "nginx 1.22.1" or "python-uvloop"
    pid: int


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _nginx_config(d: Path, hosts: Sequence[str], port: int, connections: int) -> str:
    listen = "\n        ".join(f"listen {h}:{port} backlog=4096;" for h in hosts)
    temps = "\n    ".join(
        f"{t}_temp_path {d}/{t}_temp;" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    body = BODY.decode().replace("\n", "\\n")
    return f"""\
worker_processes 1;
worker_rlimit_nofile {connections + 64};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    {temps}
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
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stderr
    name = "nginx " + version.strip().rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="conpool-bench-nginx-") as tmp:
        d = Path(tmp)
        for _ in range(5):
            with socket.socket() as s:
                s.bind((hosts[0], 0))
                port = int(s.getsockname()[1])
            conf = d / "nginx.conf"
            conf.write_text(_nginx_config(d, hosts, port, connections))
            # No master process: the pid we start is the one worker, pinned
            # and stopped by SIGTERM like the others.
            argv = [binary, "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")]
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
                if proc.poll() is None:
                    yield Running(tuple(hosts), port, name, proc.pid)
                    return
            finally:
                stop(proc)
        # Five ports taken meanwhile, or nginx fails: say why.
        log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
        raise RuntimeError(f"nginx did not start: {log.strip()[-300:]}")


@contextlib.contextmanager
def _python(
    kind: str, hosts: Sequence[str], cpu: int | None, connections: int, max_seconds: float
) -> Iterator[Running]:
    args = ["bench.servers", kind, "--max-seconds", str(max_seconds)]
    args += [f"--host={h}" for h in hosts]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    if connections > 512:
        args += ["--nofile", str(connections + 256)]
    proc, port = start_listener(args)
    try:
        uv = importlib.util.find_spec("uvloop") is not None
        yield Running(tuple(hosts), port, "python-uvloop" if uv else "python-asyncio", proc.pid)
    finally:
        stop(proc)


def start(
    kind: str,
    hosts: Sequence[str] = ("127.0.0.1",),
    *,
    cpu: int | None = None,
    connections: int = 1024,
    max_seconds: float = 600.0,
) -> contextlib.AbstractContextManager[Running]:
    """A server of ``kind`` ("http" or "echo") on ``hosts`` (one port for
    all), pinned to ``cpu``, able to hold ``connections``."""
    if kind == "http":
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if binary is not None:
            return _nginx(binary, hosts, cpu, connections)
    return _python(kind, hosts, cpu, connections, max_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
