"""The servers ``conpool stress`` measures the pool against, in a process of their own.

The servers run in a child process (``python -m conpool.stress.servers``) so
the client's event loop measures the pool and not the servers sharing its
CPU.  The child listens on every address of the stress name, each kind of
server on one port shared by all the addresses:

* ``echo``: echoes bytes back;
* ``http``: minimal HTTP/1.1 with keep-alive (``200 ok``);
* ``http_idle``: the same, but it closes a connection idle for ``idle_close`` s;
* ``fleet``: the echo server again, on a port of its own for the ``fleet``
  scenario, which counts its concurrent connections (``peak``);
* ``tls``: the echo server behind TLS, with a certificate for the stress name
  from a throw-away trustme CA (absent when trustme is not installed);
* ``slow``: a :class:`~conpool.stress.proxy.LatencyProxy` on each address in
  front of the echo server (or of ``--target``), one of them ``slow_delay`` s slower;
* ``uneven``: the same in front of the HTTP server (or ``--target``), each
  address slower than the one before (``uneven_delays``).

The parent talks to the child with one JSON object per line: the child
announces its ports on stdout, then answers commands read from stdin
(``down``/``up`` an address, ``status``, ``peak``, ``stop``).  The child ignores SIGINT
(the parent stops it) and exits when its stdin closes, so it never outlives
the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from .proxy import LatencyProxy

__all__ = [
    "STRESS_ADDRESSES",
    "STRESS_NAME",
    "ServerError",
    "ServerProcess",
    "ServerSpec",
    "terminate",
]

#: The name the stress scenarios connect to, and its four loopback addresses.
STRESS_NAME = "stress.test"
STRESS_ADDRESSES: tuple[str, ...] = ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")

_HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
_HTTP_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    b"Connection: close\r\n\r\nok\n"
)


class ServerError(RuntimeError):
    """The server process did not start, or did not answer a command."""


@dataclass(frozen=True)
class ServerSpec:
    """What the child process serves.

    :ivar addresses: the addresses every server listens on.
    :ivar embedded: run the echo/HTTP/TLS servers (False with ``--target``).
    :ivar proxy_to: ``(host, port)`` the ``slow`` proxies forward to; None
        means the embedded echo server on the same address.
    :ivar slow_address: the address whose proxy adds ``slow_delay``.
    :ivar uneven_delays: what the ``uneven`` proxies add, one delay per address
        in order (they front the HTTP server, or ``--target``).
    :ivar idle_close: seconds after which ``http_idle`` closes an idle connection.
    """

    addresses: tuple[str, ...] = STRESS_ADDRESSES
    embedded: bool = True
    proxy_to: tuple[str, int] | None = None
    slow_address: str = STRESS_ADDRESSES[-1]
    slow_delay: float = 0.020
    uneven_delays: tuple[float, ...] = (0.0, 0.001, 0.002, 0.004)
    idle_close: float = 0.15
    server_name: str = STRESS_NAME


# ----------------------------------------------------------------------------
# The child process


@dataclass
class _Counts:
    accepted: Counter[str] = field(default_factory=Counter)  # "kind ip" -> connections
    requests: Counter[str] = field(default_factory=Counter)  # "kind ip" -> HTTP requests


class _Base(asyncio.Protocol):
    def __init__(self, hub: _Hub, kind: str) -> None:
        self.hub = hub
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (A stream connection's transport is an asyncio.Transport; uvloop's
        # implement the interface without subclassing it.)
        stream = self.transport = cast(asyncio.Transport, transport)
        sockname = stream.get_extra_info("sockname")
        self.ip = sockname[0] if sockname else ""
        self.hub.connections.setdefault(self.ip, set()).add(stream)
        self.hub.counts.accepted[f"{self.kind} {self.ip}"] += 1
        self.hub.opened(self.kind)

    def connection_lost(self, exc: Exception | None) -> None:
        conns = self.hub.connections.get(self.ip)
        if conns is not None and self.transport is not None:
            conns.discard(self.transport)
        self.hub.open_now[self.kind] -= 1


class _Echo(_Base):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _HTTP(_Base):
    """HTTP/1.1 keep-alive: every request (headers only) gets ``200 ok``."""

    def __init__(self, hub: _Hub, kind: str, idle_close: float | None) -> None:
        super().__init__(hub, kind)
        self.buffer = b""
        self.idle_close = idle_close
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self.idle_close is None or self.transport is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.idle_close, self.transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.hub.counts.requests[f"{self.kind} {self.ip}"] += 1
            close = b"\r\nconnection: close" in head.lower()
            if close:
                self.transport.write(_HTTP_CLOSE)
                self.transport.close()
                return
            self.transport.write(_HTTP_OK)
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().connection_lost(exc)


class _Hub:
    """Every listener of the child, by kind and address, and every open connection."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.ports: dict[str, int] = {}
        self.listeners: dict[tuple[str, str], asyncio.Server | LatencyProxy] = {}
        self.connections: dict[str, set[asyncio.Transport]] = {}
        self.counts = _Counts()
        self.notes: list[str] = []
        self.ca_pem: str | None = None
        self.ssl_context: Any = None
        self.down: set[str] = set()
        # Connections open now, and the most at once since the last ``peak``, per kind.
        self.open_now: Counter[str] = Counter()
        self.peak_open: Counter[str] = Counter()

    def opened(self, kind: str) -> None:
        now = self.open_now[kind] = self.open_now[kind] + 1
        if now > self.peak_open[kind]:
            self.peak_open[kind] = now

    def peak(self, kind: str) -> dict[str, int]:
        """Connections of ``kind`` open now and the most open at once since the
        last call (every accept counts: no sampling misses a peak)."""
        out = {"open": self.open_now[kind], "peak": self.peak_open[kind]}
        self.peak_open[kind] = self.open_now[kind]
        return out

    def _factory(self, kind: str) -> Callable[[], asyncio.Protocol]:
        if kind in ("echo", "tls", "fleet"):
            return lambda: _Echo(self, kind)
        if kind == "http":
            return lambda: _HTTP(self, kind, None)
        if kind == "http_idle":
            return lambda: _HTTP(self, kind, self.spec.idle_close)
        raise ValueError(kind)

    async def _listen(self, kind: str, ip: str, port: int) -> asyncio.Server | LatencyProxy:
        loop = asyncio.get_running_loop()
        if kind in ("slow", "uneven"):
            inner = "echo" if kind == "slow" else "http"
            upstream = self.spec.proxy_to or (ip, self.ports[inner])
            if kind == "slow":
                delay = self.spec.slow_delay if ip == self.spec.slow_address else 0.0
            else:
                index = self.spec.addresses.index(ip)
                delays = self.spec.uneven_delays
                delay = delays[index] if index < len(delays) else delays[-1]
            proxy = LatencyProxy(ip, port, upstream[0], upstream[1], delay)
            await proxy.start()
            return proxy
        return await loop.create_server(
            self._factory(kind),
            ip,
            port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl_context if kind == "tls" else None,
        )

    async def open_kind(self, kind: str) -> None:
        """Listen on one port shared by every address (retrying a port another
        process took on one address between our binds)."""
        addresses = self.spec.addresses
        last: OSError | None = None
        for _ in range(20):
            first = await self._listen(kind, addresses[0], 0)
            port = _port_of(first)
            opened = [first]
            try:
                opened.extend([await self._listen(kind, ip, port) for ip in addresses[1:]])
            except OSError as exc:
                last = exc
                for listener in opened:
                    listener.close()
                continue
            self.ports[kind] = port
            for ip, listener in zip(addresses, opened, strict=True):
                self.listeners[(kind, ip)] = listener
            return
        raise OSError(f"no port free on every one of {', '.join(addresses)}: {last}")

    def _setup_tls(self) -> None:
        try:
            import ssl

            import trustme
        except ImportError:
            self.notes.append("TLS listener not started: the trustme package is not installed")
            return
        ca = trustme.CA()
        cert = ca.issue_cert(self.spec.server_name)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.ssl_context = ctx
        self.ca_pem = ca.cert_pem.bytes().decode("ascii")

    async def start(self) -> None:
        if self.spec.embedded:
            self._setup_tls()
            kinds = ["echo", "http", "http_idle", "fleet"]
            if self.ssl_context is not None:
                kinds.append("tls")
            for kind in kinds:
                await self.open_kind(kind)
        await self.open_kind("slow")
        await self.open_kind("uneven")

    async def take_down(self, ip: str) -> None:
        """Stop listening on ``ip`` and reset every connection to it."""
        if ip not in self.spec.addresses:
            raise ValueError(f"unknown address {ip!r}")
        self.down.add(ip)
        for (_kind, lip), listener in list(self.listeners.items()):
            if lip == ip:
                listener.close()
        for transport in list(self.connections.get(ip, ())):
            transport.abort()
        for (_kind, lip), listener in list(self.listeners.items()):
            if lip == ip and isinstance(listener, asyncio.Server):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 1.0)

    async def bring_up(self, ip: str) -> None:
        if ip not in self.spec.addresses:
            raise ValueError(f"unknown address {ip!r}")
        for kind, port in self.ports.items():
            self.listeners[(kind, ip)] = await self._listen(kind, ip, port)
        self.down.discard(ip)

    def status(self) -> dict[str, Any]:
        return {
            "accepted": dict(self.counts.accepted),
            "requests": dict(self.counts.requests),
            "open": {ip: len(conns) for ip, conns in self.connections.items()},
            "down": sorted(self.down),
        }

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        for conns in self.connections.values():
            for transport in list(conns):
                transport.abort()


def _port_of(listener: asyncio.Server | LatencyProxy) -> int:
    if isinstance(listener, LatencyProxy):
        server = listener._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]
        return port
    port = listener.sockets[0].getsockname()[1]
    return port


def _write(obj: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # the parent closed the pipe: it no longer listens


async def _serve(spec: ServerSpec) -> None:
    loop = asyncio.get_running_loop()
    hub = _Hub(spec)
    try:
        await hub.start()
    except Exception as exc:
        _write({"error": f"{type(exc).__name__}: {exc}"})
        hub.close()
        return
    _write(
        {
            "ready": True,
            "pid": os.getpid(),
            "ports": hub.ports,
            "ca_pem": hub.ca_pem,
            "notes": hub.notes,
            "loop": type(loop).__module__.split(".")[0],
        }
    )
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        loop.call_soon_threadsafe(commands.put_nowait, None)  # the parent went away

    threading.Thread(target=read_stdin, name="commands", daemon=True).start()
    while True:
        line = await commands.get()
        if line is None:
            break
        try:
            cmd = json.loads(line)
            op = cmd.get("cmd")
            if op == "stop":
                _write({"ok": True})
                break
            if op == "down":
                await hub.take_down(cmd["ip"])
                _write({"ok": True})
            elif op == "up":
                await hub.bring_up(cmd["ip"])
                _write({"ok": True})
            elif op == "status":
                _write({"ok": True, "status": hub.status()})
            elif op == "peak":
                _write({"ok": True, "peak": hub.peak(str(cmd["kind"]))})
            else:
                _write({"error": f"unknown command {op!r}"})
        except Exception as exc:
            _write({"error": f"{type(exc).__name__}: {exc}"})
    hub.close()
    await asyncio.sleep(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child: ``python -m conpool.stress.servers SPEC_JSON``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else argv
    raw = json.loads(args[0]) if args else {}
    if raw.get("proxy_to") is not None:
        raw["proxy_to"] = tuple(raw["proxy_to"])
    raw["addresses"] = tuple(raw.get("addresses", STRESS_ADDRESSES))
    if "uneven_delays" in raw:
        raw["uneven_delays"] = tuple(raw["uneven_delays"])
    spec = ServerSpec(**raw)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(spec))
    else:
        uvloop.run(_serve(spec))
    return 0


# ----------------------------------------------------------------------------
# The parent's handle


def terminate(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Stop ``proc`` (a child of ours) with SIGTERM, then SIGKILL if it is
    still there after ``timeout`` seconds, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class ServerProcess:
    """Start the servers in a child process and control them.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    START_TIMEOUT = 15.0
    COMMAND_TIMEOUT = 10.0

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.ports: dict[str, int] = {}
        self.ca_pem: str | None = None
        self.notes: list[str] = []
        self.loop_name = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: Any = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        spec = asdict(self.spec)
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "conpool.stress.servers", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C in the terminal reaches the parent
            # only, which then stops the servers itself.
            start_new_session=True,
        )
        try:
            hello = self._read(self.START_TIMEOUT)
        except ServerError:
            self.stop()
            raise
        if "error" in hello:
            self.stop()
            raise ServerError(f"the stress servers did not start: {hello['error']}")
        self.ports = {k: int(v) for k, v in hello["ports"].items()}
        self.ca_pem = hello.get("ca_pem")
        self.notes = list(hello.get("notes", []))
        self.loop_name = str(hello.get("loop", ""))

    def _read(self, timeout: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerError(f"the stress servers did not answer within {timeout:g} s")
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                line = proc.stdout.readline()
                if line:
                    answer: dict[str, Any] = json.loads(line)
                    return answer
                raise ServerError(f"the stress servers exited:\n{self._stderr_text()}")
            if proc.poll() is not None:
                raise ServerError(
                    f"the stress servers exited with status {proc.returncode}:\n"
                    f"{self._stderr_text()}"
                )

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text: str = self._stderr.read()
        return text.strip()[-4000:]

    def command(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (blocking: call it from a thread)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise ServerError("the stress servers are not running")
            try:
                proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise ServerError(f"the stress servers went away: {exc}") from exc
            answer = self._read(self.COMMAND_TIMEOUT)
        if "error" in answer:
            raise ServerError(f"{cmd}: {answer['error']}")
        return answer

    def down(self, ip: str) -> None:
        self.command("down", ip=ip)

    def up(self, ip: str) -> None:
        self.command("up", ip=ip)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.command("status")["status"]
        return status

    def peak(self, kind: str) -> dict[str, int]:
        """``{"open": N, "peak": M}``: connections of ``kind`` open now, and the
        most open at once since the last call."""
        peak: dict[str, int] = self.command("peak", kind=kind)["peak"]
        return peak

    def stop(self) -> None:
        """Stop the child by its PID: ask, then SIGTERM, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                    proc.stdin.flush()
                    self._proc = proc
                    with contextlib.suppress(ServerError):
                        self._read(2.0)  # the child's "ok", so it never writes to a closed pipe
                self._proc = None
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                terminate(proc, 3.0)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess pid={self.pid} ports={self.ports}>"


if __name__ == "__main__":
    sys.exit(main())
