"""Real servers for the test suite, all on loopback and all stopped by PID.

Two kinds live here:

* Debian's own server binaries (nginx, redis-server, dnsmasq), each run in the
  foreground under :class:`subprocess.Popen` in a directory of its own, polled
  until it answers and stopped by PID. Nothing here ever signals a process by
  name, so a developer's own nginx or redis is never touched.
* Plain-Python threaded servers (:class:`EchoServer`, :class:`TLSEchoServer`)
  built on blocking sockets, so they never depend on the async backend that the
  test exercises.

``tests/conftest.py`` turns these into fixtures; tests that need something more
unusual (a second dnsmasq, nginx with TLS) build one here directly.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, NoReturn, Self

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
import pytest
import trustme

LOOPBACK = "127.0.0.1"
#: The four loopback addresses the multi-address tests spread a name over.
POOL_ADDRESSES: tuple[str, ...] = ("127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14")
#: The DNS records the ``dnsmasq`` fixture starts with.
POOL_RECORDS: Mapping[str, Sequence[str]] = {"pool.test": POOL_ADDRESSES}

START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

# Daemons live in sbin, which a non-root PATH may lack.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


# --------------------------------------------------------------------------
# Skipping, which CI forbids


def in_ci() -> bool:
    """True when running under CI, where no test may skip."""
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI (``CI=true``), where nothing may skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: nothing may skip)", pytrace=False)
    pytest.skip(reason)


def need(binary: str, why: str) -> str:
    """Return the path of *binary*, or skip (fail under CI) when it is missing.

    :param binary: program name, looked up on ``PATH`` and then in the sbin directories
    :param why: what the test needs it for, shown in the skip reason
    """
    path = shutil.which(binary) or shutil.which(binary, path=_SBIN_PATH)
    if path is None:
        skip_or_fail(f"{binary} not installed (run scripts/setup as root): {why}")
    return path


def need_root(why: str) -> None:
    """Skip (fail under CI) unless running as root."""
    if os.geteuid() != 0:
        skip_or_fail(f"needs root: {why}")


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll *condition* until it is true; raise :class:`TimeoutError` after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} still false after {timeout} s")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Ports

_random = random.SystemRandom()  # untouched by tests (or hypothesis) seeding `random`


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_ports() -> Iterator[int]:
    # Prefer ports below the kernel's ephemeral range: client sockets never get those
    # as their local port, so a server started after thousands of test connections
    # cannot collide with one of them lingering in TIME_WAIT.
    low, _high = _ephemeral_range()
    if low > 12000:
        for _ in range(64):
            yield _random.randint(10000, low - 1)
    while True:
        yield 0  # let the kernel choose


def _try_bind(hosts: Sequence[str], port: int, udp: bool) -> int | None:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    with contextlib.ExitStack() as stack:
        for host in hosts:
            for kind in kinds:
                sock = stack.enter_context(socket.socket(_family(host), kind))
                try:
                    sock.bind((host, port))
                except OSError:
                    return None
                port = sock.getsockname()[1]
    return port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def unused_port(host: str = LOOPBACK, *, extra_hosts: Sequence[str] = (), udp: bool = False) -> int:
    """A TCP port nothing is bound to on *host* (and on every one of *extra_hosts*).

    :param udp: the port must also be free for UDP (for a DNS server)
    """
    hosts = [host, *extra_hosts]
    for candidate in _candidate_ports():
        port = _try_bind(hosts, candidate, udp)
        if port is not None:
            return port
    raise AssertionError("unreachable")  # pragma: no cover


_refused: dict[str, socket.socket] = {}
_refused_lock = threading.Lock()


def refused_port(host: str = LOOPBACK) -> int:
    """A port on *host* where every connect is refused, for the whole test run.

    The port is held by a socket that is bound but never listens: the kernel answers
    a SYN to it with a reset, and nothing else can bind it in the meantime.
    """
    with _refused_lock:
        sock = _refused.get(host)
        if sock is None:
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            sock.bind((host, unused_port(host)))
            _refused[host] = sock
        port: int = sock.getsockname()[1]
        return port


@atexit.register
def _close_refused() -> None:
    with _refused_lock:
        for sock in _refused.values():
            sock.close()
        _refused.clear()


def can_connect(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``(host, port)`` is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def can_connect_unix(path: Path | str, timeout: float = 0.2) -> bool:
    """True when a connection to the Unix socket at *path* is accepted."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def socket_directory() -> Iterator[Path]:
    """A fresh private directory with a short path, for Unix sockets.

    pytest's ``tmp_path`` can be longer than the 107 bytes a socket path may
    hold, so sockets live in a directory of their own under ``/tmp``, removed
    afterwards.
    """
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------
# Server binaries run in the foreground


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries its output and logs."""


class _AddressInUseError(ServerStartError):
    pass


def _process_group(pgid: int) -> list[int]:
    """PIDs of every process in process group *pgid* (read from /proc, not by name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def pid_alive(pid: int) -> bool:
    """True while *pid* exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class Started(abc.ABC):
    """A test server that ``with server:`` starts, and stops on the way out
    (also when the block raises)."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    """Stop a server started in a session of its own, by its PID: *signum*, a
    bounded wait, then SIGKILL to its process group; reaped either way."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its PID (the group id) is still ours.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


class ServerProcess(Started):
    """A server binary run in the foreground under :class:`subprocess.Popen`.

    It lives in *directory* (config, pid file, logs), is started in a session of
    its own, polled until it answers, and stopped by PID: SIGTERM, a bounded wait,
    then SIGKILL to its process group. :meth:`start` after :meth:`stop` restarts it
    on the same port. Usable as a context manager.
    """

    name: ClassVar[str] = "server"

    def __init__(self, directory: Path, binary: str, *, port_given: bool) -> None:
        self.directory = directory
        self.binary = binary
        self.output_path = directory / f"{self.name}.out"
        #: The last PID this server ran under, kept after :meth:`stop` for checks.
        self.last_pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._may_move_port = not port_given
        directory.mkdir(parents=True, exist_ok=True)

    # -- to implement ------------------------------------------------------

    def argv(self) -> list[str]:
        """Write the configuration and return the command line."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def log_paths(self) -> list[Path]:
        """Log files, besides stdout/stderr, to show when startup fails."""
        return []

    def choose_new_port(self) -> None:
        """Pick another port after a startup lost a race for the first one."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running server, or ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this server (its process group, e.g. nginx workers)."""
        return _process_group(self.last_pid) if self.last_pid is not None else []

    def start(self) -> None:
        """Start the server and return once it answers.

        :raises ServerStartError: it exited or did not answer within 5 s
        """
        if self.running:
            raise RuntimeError(f"{self.name} already running as PID {self.pid}")
        for attempt in range(3):
            try:
                self._start_once()
            except _AddressInUseError:
                # Another process took the port between choosing and binding it.
                if not self._may_move_port or attempt == 2:
                    raise
                self.choose_new_port()
            else:
                self._may_move_port = False  # a restart must keep the port clients know
                return

    def _start_once(self) -> None:
        argv = self.argv()
        offsets = {path: _size(path) for path in [self.output_path, *self.log_paths()]}
        with self.output_path.open("ab") as output:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # its own process group, so a kill reaches workers
            )
        self.last_pid = self._process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                logs = self._read_logs(offsets)
                error = _AddressInUseError if "in use" in logs else ServerStartError
                raise error(f"{self.name} exited with status {code} while starting:\n{logs}")
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                logs = self._read_logs(offsets)
                raise ServerStartError(
                    f"{self.name} not answering after {START_TIMEOUT} s:\n{' '.join(argv)}\n{logs}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop the server by PID; does nothing when it is not running."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send *signum* to the running server."""
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        self._process.send_signal(signum)

    def logs(self) -> str:
        """Its stdout/stderr and log files, for assertion messages."""
        return self._read_logs({})

    def _read_logs(self, offsets: Mapping[Path, int]) -> str:
        parts = []
        for path in [self.output_path, *self.log_paths()]:
            try:
                with path.open("rb") as file:
                    file.seek(offsets.get(path, 0))
                    text = file.read().decode(errors="replace")
            except OSError:
                continue
            parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {state} dir={self.directory}>"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------
# nginx


@dataclasses.dataclass(frozen=True)
class AccessLogLine:
    """One request in nginx's access log: which listener, which client, which request."""

    server_addr: str
    server_port: int  # 0 on a Unix socket
    remote_addr: str  # "unix:" on a Unix socket
    remote_port: int  # 0 on a Unix socket
    conn: int  # nginx's connection serial number
    req: int  # the request's position on that connection, from 1


_LOG_FORMAT = (
    "$server_addr:$server_port $remote_addr:$remote_port conn=$connection req=$connection_requests"
)
_LOG_LINE = re.compile(
    r"(?P<server_addr>\S+?):(?P<server_port>\d*) (?P<remote_addr>\S+?):(?P<remote_port>\d*)"
    r" conn=(?P<conn>\d+) req=(?P<req>\d+)"
)


def write_cert_files(ca: trustme.CA, names: Sequence[str], directory: Path) -> tuple[Path, Path]:
    """Issue a certificate for *names* and write ``(chain.pem, key.pem)`` in *directory*."""
    leaf = ca.issue_cert(*names)
    chain = directory / "chain.pem"
    key = directory / "key.pem"
    for index, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(str(chain), append=index > 0)
    leaf.private_key_pem.write_to_path(str(key))
    return chain, key


class NginxServer(ServerProcess):
    """nginx serving ``200 ok`` over HTTP/1.1 keep-alive on loopback addresses.

    Every address in *addresses* listens on the same :attr:`port`; with *tls_cert*
    and *tls_key* every address also listens with TLS on :attr:`tls_port`.
    ``GET /`` answers ``ok\\n``; when the echo module is installed (it comes with
    nginx-light), ``GET /sleep?s=0.3`` answers after that delay.

    Each request is logged as an :class:`AccessLogLine`; nginx writes the line after
    the response, so use :meth:`wait_for_log` rather than :meth:`log_lines` right
    after reading a response.

    As root the master opens the logs and the worker runs as ``nobody``: the worker
    needs no access to :attr:`directory`, so no ``user`` directive is written.
    """

    name = "nginx"

    def __init__(
        self,
        directory: Path,
        *,
        addresses: Sequence[str] = (LOOPBACK,),
        port: int | None = None,
        keepalive_timeout: float = 75.0,
        keepalive_requests: int = 1000,
        worker_connections: int = 1024,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        unix_socket: Path | None = None,
        unix_tls_socket: Path | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory, binary or need("nginx", "nginx fixture"), port_given=port is not None
        )
        #: Also listen on this Unix socket (``listen unix:PATH``), same server.
        self.unix_socket = unix_socket
        #: And with TLS on this one (needs *tls_cert* and *tls_key*).
        self.unix_tls_socket = unix_tls_socket
        if unix_tls_socket is not None and tls_cert is None:
            raise ValueError("a TLS Unix socket needs tls_cert and tls_key")
        if not addresses:
            raise ValueError("nginx needs at least one address")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        self.addresses = tuple(addresses)
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_requests = keepalive_requests
        self.worker_connections = worker_connections
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.has_sleep = _ECHO_MODULE.exists()
        self.conf_path = directory / "nginx.conf"
        self.access_log = directory / "access.log"
        self.error_log = directory / "error.log"
        self.port = port if port is not None else self._free_port()
        self.tls_port: int | None = None
        if tls_cert is not None:
            self.tls_port = self._free_port()

    @property
    def host(self) -> str:
        """The first address."""
        return self.addresses[0]

    def url(self, path: str = "/", *, address: str | None = None, tls: bool = False) -> str:
        scheme, port = ("https", self.tls_port) if tls else ("http", self.port)
        return f"{scheme}://{address or self.host}:{port}{path}"

    def _free_port(self) -> int:
        return unused_port(self.addresses[0], extra_hosts=self.addresses[1:])

    def choose_new_port(self) -> None:
        self.port = self._free_port()
        if self.tls_port is not None:
            self.tls_port = self._free_port()

    def argv(self) -> list[str]:
        self.conf_path.write_text(self._config())
        return [
            self.binary,
            "-p", f"{self.directory}/",
            "-c", str(self.conf_path),
            "-e", str(self.error_log),
            "-g", "daemon off;",
        ]  # fmt: skip

    def _config(self) -> str:
        d = self.directory
        listen = [f"listen {address}:{self.port};" for address in self.addresses]
        if self.unix_socket is not None:
            listen.append(f"listen unix:{self.unix_socket};")
        if self.tls_port is not None:
            listen += [f"listen {address}:{self.tls_port} ssl;" for address in self.addresses]
            if self.unix_tls_socket is not None:
                listen.append(f"listen unix:{self.unix_tls_socket} ssl;")
            listen += [
                f"ssl_certificate {self.tls_cert};",
                f"ssl_certificate_key {self.tls_key};",
                "ssl_protocols TLSv1.2 TLSv1.3;",  # 1.22 needs this for TLS 1.3
            ]
        sleep = ""
        if self.has_sleep:
            sleep = 'location = /sleep { echo_sleep $arg_s; echo "ok"; }'
        load = f"load_module {_ECHO_MODULE};" if self.has_sleep else ""
        timeout_ms = round(self.keepalive_timeout * 1000)
        server_lines = "\n        ".join(listen)
        return f"""\
{load}
worker_processes 1;
pid {d}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections {self.worker_connections}; }}
http {{
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    default_type text/plain;
    log_format pool '{_LOG_FORMAT}';
    access_log {self.access_log} pool;
    server {{
        {server_lines}
        keepalive_timeout {timeout_ms}ms;
        keepalive_requests {self.keepalive_requests};
        {sleep}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

    def is_ready(self) -> bool:
        ports = [self.port] if self.tls_port is None else [self.port, self.tls_port]
        # A connection that sends nothing leaves no line in the access log.
        for path in (self.unix_socket, self.unix_tls_socket):
            if path is not None and not can_connect_unix(path):
                return False
        return all(can_connect(a, p) for a in self.addresses for p in ports)

    def log_paths(self) -> list[Path]:
        return [self.error_log]

    def log_lines(self) -> list[AccessLogLine]:
        """Every request logged so far, oldest first."""
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        lines = []
        for raw in text.splitlines():
            match = _LOG_LINE.fullmatch(raw)
            if match is None:
                raise ValueError(f"unexpected nginx access log line: {raw!r}")
            lines.append(
                AccessLogLine(
                    server_addr=match["server_addr"],
                    server_port=int(match["server_port"] or 0),
                    remote_addr=match["remote_addr"],
                    remote_port=int(match["remote_port"] or 0),
                    conn=int(match["conn"]),
                    req=int(match["req"]),
                )
            )
        return lines

    def wait_for_log(self, n: int, timeout: float = 5.0) -> list[AccessLogLine]:
        """Wait until at least *n* requests are logged, and return them all."""
        wait_for(lambda: len(self.log_lines()) >= n, timeout, what=f"{n} nginx log lines")
        return self.log_lines()


# --------------------------------------------------------------------------
# redis


class RedisServer(ServerProcess):
    """redis-server on 127.0.0.1, no persistence, ``DEBUG`` allowed from loopback.

    ``DEBUG SLEEP 0.3`` stalls it; ``CLIENT KILL TYPE normal SKIPME yes`` drops
    every client connection.
    """

    name = "redis"

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        debug_command: bool = True,
        password: str | None = None,
        unix_socket: Path | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory,
            binary or need("redis-server", "redis fixture"),
            port_given=port is not None,
        )
        self.host = LOOPBACK
        self.port = port if port is not None else unused_port(self.host)
        self.debug_command = debug_command
        #: ``--requirepass``: every client must AUTH first.
        self.password = password
        #: ``--unixsocket PATH --unixsocketperm 700``: also served there.
        self.unix_socket = unix_socket

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def choose_new_port(self) -> None:
        self.port = unused_port(self.host)

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        if self.debug_command:
            argv += ["--enable-debug-command", "local"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.unix_socket is not None:
            argv += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return argv

    def is_ready(self) -> bool:
        return self.ping() and (self.unix_socket is None or self.ping(unix=True))

    def ping(self, timeout: float = 0.5, *, unix: bool = False) -> bool:
        """True when ``PING`` gets ``+PONG`` on a fresh connection (after
        ``AUTH`` when the server wants a password), over TCP or, with
        *unix*, over its Unix socket."""
        auth = b""
        if self.password is not None:
            auth = b"AUTH %s\r\n" % self.password.encode()
        expected = (b"+OK\r\n" if auth else b"") + b"+PONG\r\n"
        try:
            return self.command(auth + b"PING\r\n", len(expected), timeout, unix=unix) == expected
        except OSError:
            return False

    def command(
        self, request: bytes, reply_size: int, timeout: float = 2.0, *, unix: bool = False
    ) -> bytes:
        """Send raw RESP *request* on a fresh connection and read until
        *reply_size* bytes came (or the server closed)."""
        if unix:
            assert self.unix_socket is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.unix_socket))
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self.address, timeout=timeout)
        with sock:
            sock.sendall(request)
            reply = b""
            while len(reply) < reply_size:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply


# --------------------------------------------------------------------------
# dnsmasq


class DnsmasqServer(ServerProcess):
    """dnsmasq as a closed DNS authority for ``.test`` on 127.0.0.1 (UDP and TCP).

    Names come from a hosts file (:meth:`set_records`); unknown names under
    ``.test`` get NXDOMAIN, a name without an AAAA record an empty answer.
    Nothing is cached and nothing is forwarded. :meth:`stop` and :meth:`start`
    let a test take DNS away and bring it back on the same port.
    """

    name = "dnsmasq"

    def __init__(
        self,
        directory: Path,
        records: Mapping[str, Sequence[str]] = POOL_RECORDS,
        *,
        local_ttl: int = 1,
        port: int | None = None,
        log_queries: bool = True,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory, binary or need("dnsmasq", "dnsmasq fixture"), port_given=port is not None
        )
        self.host = LOOPBACK
        self.port = port if port is not None else unused_port(self.host, udp=True)
        self.local_ttl = local_ttl
        self.log_queries = log_queries
        self.conf_path = directory / "dnsmasq.conf"
        self.hosts_file = directory / "hosts"
        self.log_file = directory / "dnsmasq.log"
        self.records: dict[str, list[str]] = {}
        self._write_hosts(records)

    def choose_new_port(self) -> None:
        self.port = unused_port(self.host, udp=True)

    def argv(self) -> list[str]:
        options = [
            f"port={self.port}",
            f"listen-address={self.host}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "local=/test/",
            f"addn-hosts={self.hosts_file}",
            f"local-ttl={self.local_ttl}",
            "neg-ttl=1",
            "cache-size=0",
            f"pid-file={self.directory}/dnsmasq.pid",
            f"log-facility={self.log_file}",
        ]
        if self.log_queries:
            options.append("log-queries")
        if os.geteuid() == 0:
            # As root dnsmasq would drop to `nobody`, who cannot read a private test
            # directory; staying root is simpler than loosening permissions.
            options.append("user=root")
        self.conf_path.write_text("\n".join(options) + "\n")
        return [self.binary, "-k", f"--conf-file={self.conf_path}"]

    def is_ready(self) -> bool:
        # TCP first: a refused connect fails at once, where a UDP query to a port not
        # yet bound would wait out its whole timeout.
        if not can_connect(self.host, self.port):
            return False
        query = dns.message.make_query("ready.test.", dns.rdatatype.A)
        try:
            dns.query.udp(query, self.host, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return True  # any answer, NXDOMAIN included, means it serves

    def log_paths(self) -> list[Path]:
        return [self.log_file]

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    def query(self, name: str, rdtype: str = "A", lifetime: float = 2.0) -> list[str]:
        """Sorted addresses for *name*; empty for NXDOMAIN or no records of *rdtype*.

        :raises dns.exception.Timeout: the server does not answer
        """
        try:
            answer = self.resolver(lifetime).resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return sorted(rdata.to_text() for rdata in answer)

    def set_records(self, mapping: Mapping[str, Sequence[str]], timeout: float = 5.0) -> None:
        """Serve exactly *mapping* (name -> IPv4/IPv6 addresses) from now on.

        Rewrites the hosts file atomically, tells dnsmasq (SIGHUP) and waits until its
        answers show the change. Works while stopped too: :meth:`start` reads it.
        """
        old = set(self.records)
        self._write_hosts(mapping)
        if not self.running:
            return
        self.send_signal(signal.SIGHUP)
        expected = {name: self.records.get(name, []) for name in old | set(self.records)}
        wait_for(lambda: self._serves(expected), timeout, what="dnsmasq serving new records")

    def _serves(self, expected: Mapping[str, Sequence[str]]) -> bool:
        try:
            for name, addresses in expected.items():
                v4 = sorted(a for a in addresses if ":" not in a)
                v6 = sorted(a for a in addresses if ":" in a)
                if self.query(name, "A", 0.5) != v4 or self.query(name, "AAAA", 0.5) != v6:
                    return False
        except dns.exception.DNSException:
            return False
        return True

    def _write_hosts(self, mapping: Mapping[str, Sequence[str]]) -> None:
        lines = [
            f"{address} {name}" for name, addresses in mapping.items() for address in addresses
        ]
        temporary = self.hosts_file.with_suffix(".tmp")
        temporary.write_text("".join(f"{line}\n" for line in lines))
        os.replace(temporary, self.hosts_file)  # dnsmasq never reads half a file
        self.records = {name: list(addresses) for name, addresses in mapping.items()}


# --------------------------------------------------------------------------
# Threaded plain-Python servers


@dataclasses.dataclass
class _Connection:
    sock: socket.socket
    peer: tuple[str, int]
    request: str | None = None  # "close" or "reset", asked by another thread


class EchoServer(Started):
    """A threaded TCP echo server on blocking sockets, independent of any event loop.

    It records every accepted connection's peer port and counts connections:
    :attr:`accepted` in total, :attr:`current` open now, :attr:`max_concurrent`.
    With *close_idle_after* it closes a connection that has received nothing for
    that many seconds (a server-side keep-alive timeout). :meth:`close_all` closes
    or resets every open connection from the server side.
    """

    # How often connection threads look up from recv() for requests and idleness.
    _TICK = 0.02

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        close_idle_after: float | None = None,
        backlog: int = 128,
    ) -> None:
        self.host = host
        self.close_idle_after = close_idle_after
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port or unused_port(host)))
        self._listener.listen(backlog)
        self._listener.settimeout(self._TICK)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open: dict[int, _Connection] = {}
        self._threads: list[threading.Thread] = []
        self._accept_thread: threading.Thread | None = None
        self._peers: list[tuple[str, int]] = []
        self._max_concurrent = 0
        self._idle_closed = 0
        #: Unexpected exceptions from server threads (expected socket errors excluded).
        self.errors: list[BaseException] = []

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def peers(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every accepted connection's client, in accept order."""
        with self._lock:
            return list(self._peers)

    @property
    def peer_ports(self) -> list[int]:
        """The client port of every accepted connection, in accept order."""
        return [port for _host, port in self.peers]

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._peers)

    @property
    def current(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def max_concurrent(self) -> int:
        with self._lock:
            return self._max_concurrent

    @property
    def idle_closed(self) -> int:
        """Connections closed because of *close_idle_after*."""
        with self._lock:
            return self._idle_closed

    def start(self) -> None:
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{type(self).__name__}-accept", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, close every connection and join every thread. Idempotent."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(STOP_TIMEOUT)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(STOP_TIMEOUT)

    def close_all(self, *, reset: bool = False, timeout: float = 5.0) -> int:
        """Close (or with *reset*, RST) every open connection; return how many.

        Returns once they are all closed.
        """
        with self._lock:
            targets = list(self._open.values())
            for conn in targets:
                conn.request = "reset" if reset else "close"
        wait_for(
            lambda: all(id(conn) not in self._open for conn in targets),
            timeout,
            what="echo connections closed",
        )
        return len(targets)

    def wait_for_current(self, n: int, timeout: float = 5.0) -> None:
        """Wait until exactly *n* connections are open on the server side."""
        wait_for(lambda: self.current == n, timeout, what=f"{n} open echo connections")

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    self.errors.append(exc)
                return
            conn = _Connection(sock, (peer[0], peer[1]))
            thread = threading.Thread(
                target=self._run_connection, args=(conn,), name=f"echo-{peer[1]}", daemon=True
            )
            with self._lock:
                self._peers.append(conn.peer)
                self._open[id(conn)] = conn
                self._max_concurrent = max(self._max_concurrent, len(self._open))
                self._threads.append(thread)
            thread.start()

    def _run_connection(self, conn: _Connection) -> None:
        try:
            conn.sock.settimeout(self._TICK)
            sock = self.wrap(conn)
            if sock is not None:
                conn.sock = sock
                self._echo(conn)
        except OSError:
            pass  # the client went away: nothing to report
        except Exception as exc:
            self.errors.append(exc)
        finally:
            if conn.request == "reset":
                with contextlib.suppress(OSError):
                    # Linger 0: close() sends RST instead of FIN.
                    conn.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            conn.sock.close()
            with self._lock:
                self._open.pop(id(conn), None)

    def wrap(self, conn: _Connection) -> socket.socket | None:
        """Hook for subclasses: the socket to echo on, or ``None`` to drop it."""
        return conn.sock

    def _echo(self, conn: _Connection) -> None:
        last_activity = time.monotonic()
        while not self._stopping.is_set() and conn.request is None:
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                idle = self.close_idle_after
                if idle is not None and time.monotonic() - last_activity >= idle:
                    with self._lock:
                        self._idle_closed += 1
                    return
                continue
            if not data:
                return
            last_activity = time.monotonic()
            conn.sock.sendall(data)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.host}:{self.port} accepted={self.accepted}"
            f" current={self.current} max_concurrent={self.max_concurrent}>"
        )


class TLSEchoServer(EchoServer):
    """:class:`EchoServer` behind TLS, with a certificate from a fresh trustme CA.

    The certificate names *names*. Clients trust it with
    ``server.ca.configure_trust(ctx)`` or use :meth:`client_context`.
    :attr:`server_names` records the SNI each handshake asked for and
    :attr:`handshake_failures` counts handshakes that failed.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        names: Sequence[str] = ("pool.test", "localhost", "127.0.0.1"),
        close_idle_after: float | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(host, port, close_idle_after=close_idle_after, backlog=backlog)
        self.names = tuple(names)
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(*self.names)
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(self.server_context)
        self.server_context.sni_callback = self._record_sni
        self._server_names: list[str | None] = []
        self._handshake_failures = 0

    @property
    def server_names(self) -> list[str | None]:
        """The SNI of every handshake, in order (``None`` when the client sent none)."""
        with self._lock:
            return list(self._server_names)

    @property
    def handshake_failures(self) -> int:
        with self._lock:
            return self._handshake_failures

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def _record_sni(
        self, _sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        with self._lock:
            self._server_names.append(name)

    def wrap(self, conn: _Connection) -> socket.socket | None:
        tls = self.server_context.wrap_socket(
            conn.sock, server_side=True, do_handshake_on_connect=False
        )
        conn.sock = tls  # the plain socket is detached now; close the TLS one
        deadline = time.monotonic() + START_TIMEOUT
        while not self._stopping.is_set() and conn.request is None:
            try:
                tls.do_handshake()
            except TimeoutError:
                if time.monotonic() > deadline:
                    break
                continue
            except (ssl.SSLError, OSError):
                break
            return tls
        with self._lock:
            self._handshake_failures += 1
        return None


# --------------------------------------------------------------------------
# Proxies


class TinyproxyServer(ServerProcess):
    """tinyproxy (HTTP ``CONNECT``) on 127.0.0.1, in the foreground (``-d``).

    *connect_ports* are the target ports ``CONNECT`` may reach (tinyproxy
    refuses every other port with 403); with *username* and *password* it
    wants Basic proxy authentication (407 without it).  *allow_hosts*, when
    given, are the only target addresses it tunnels to (a filter in
    default-deny mode; the others get 403 "Filtered").
    """

    name = "tinyproxy"

    def __init__(
        self,
        directory: Path,
        *,
        connect_ports: Sequence[int],
        username: str | None = None,
        password: str | None = None,
        allow_hosts: Sequence[str] | None = None,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory,
            binary or need("tinyproxy", "HTTP proxy fixture"),
            port_given=port is not None,
        )
        self.host = LOOPBACK
        self.port = port if port is not None else unused_port(self.host)
        self.connect_ports = list(connect_ports)
        self.username = username
        self.password = password
        self.allow_hosts = allow_hosts
        self.conf_path = directory / "tinyproxy.conf"
        self.log_file = directory / "tinyproxy.log"

    def url(self, *, username: str | None = None, password: str | None = None) -> str:
        auth = f"{username}:{password}@" if username is not None else ""
        return f"http://{auth}{self.host}:{self.port}"

    def choose_new_port(self) -> None:
        self.port = unused_port(self.host)

    def argv(self) -> list[str]:
        lines = [
            f"Port {self.port}",
            f"Listen {self.host}",
            "Timeout 30",
            f'LogFile "{self.log_file}"',
            "LogLevel Info",
            f'PidFile "{self.directory}/tinyproxy.pid"',
            "MaxClients 200",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            # As root it would drop to the tinyproxy user, who cannot write
            # the private test directory.
            lines += ["User root", "Group root"]
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        if self.username is not None:
            lines.append(f"BasicAuth {self.username} {self.password}")
        if self.allow_hosts is not None:
            filter_file = self.directory / "filter"
            filter_file.write_text("".join(f"^{re.escape(host)}$\n" for host in self.allow_hosts))
            lines += [
                f'Filter "{filter_file}"',
                "FilterType ere",
                "FilterDefaultDeny Yes",
                "FilterURLs Off",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")
        return [self.binary, "-d", "-c", str(self.conf_path)]

    def is_ready(self) -> bool:
        return can_connect(self.host, self.port)

    def log_paths(self) -> list[Path]:
        return [self.log_file]


class MicrosocksServer(ServerProcess):
    """microsocks (SOCKS5) on *host* (127.0.0.1); with *username* and *password* it
    wants RFC 1929 user/password authentication."""

    name = "microsocks"

    def __init__(
        self,
        directory: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        host: str = LOOPBACK,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory,
            binary or need("microsocks", "SOCKS5 proxy fixture"),
            port_given=port is not None,
        )
        self.host = host
        self.port = port if port is not None else unused_port(self.host)
        self.username = username
        self.password = password

    def url(
        self, scheme: str = "socks5", *, username: str | None = None, password: str | None = None
    ) -> str:
        auth = f"{username}:{password}@" if username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}"

    def choose_new_port(self) -> None:
        self.port = unused_port(self.host)

    def argv(self) -> list[str]:
        argv = [self.binary, "-i", self.host, "-p", str(self.port)]
        if self.username is not None:
            argv += ["-u", self.username, "-P", self.password or ""]
        return argv

    def is_ready(self) -> bool:
        return can_connect(self.host, self.port)


class DanteServer(ServerProcess):
    """dante (``danted``: SOCKS4, SOCKS4a and SOCKS5) on 127.0.0.1, no
    authentication.  *allow_hosts*, when given, are the only target
    addresses it connects to; the others are refused by its rules (SOCKS5
    reply 2, SOCKS4 reply 91)."""

    name = "danted"

    def __init__(
        self,
        directory: Path,
        *,
        allow_hosts: Sequence[str] | None = None,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            directory,
            binary or need("danted", "SOCKS4/5 proxy fixture"),
            port_given=port is not None,
        )
        self.host = LOOPBACK
        self.port = port if port is not None else unused_port(self.host)
        self.allow_hosts = allow_hosts
        self.conf_path = directory / "danted.conf"
        self.log_file = directory / "danted.log"

    def url(self, scheme: str = "socks5") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    def choose_new_port(self) -> None:
        self.port = unused_port(self.host)

    def argv(self) -> list[str]:
        targets = (
            ["0.0.0.0/0"]
            if self.allow_hosts is None
            else [f"{host}/32" for host in self.allow_hosts]
        )
        rules = "".join(
            f"socks pass {{ from: 127.0.0.0/8 to: {target} command: connect }}\n"
            for target in targets
        )
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.conf_path.write_text(
            f"""\
logoutput: {self.log_file}
internal: {self.host} port = {self.port}
external: {self.host}
clientmethod: none
socksmethod: none
user.privileged: {user}
user.unprivileged: {user}
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
{rules}socks block {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect error }}
"""
        )
        return [
            self.binary, "-f", str(self.conf_path), "-p", str(self.directory / "danted.pid"),
            "-N", "1",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return can_connect(self.host, self.port)

    def log_paths(self) -> list[Path]:
        return [self.log_file]


class TLSTerminator(Started):
    """TLS in front of a TCP server (a real proxy such as tinyproxy, which
    has no TLS of its own), making it an ``https://`` proxy: each TLS
    connection is relayed, decrypted, to *backend*.  Threaded, on blocking
    sockets; the certificate names *names*, from a fresh trustme CA."""

    def __init__(self, backend: tuple[str, int], *, names: Sequence[str] = ("127.0.0.1",)) -> None:
        self.backend = backend
        self.ca = trustme.CA()
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(self.server_context)
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, unused_port()))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.accepted = 0

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def start(self) -> None:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(STOP_TIMEOUT)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            thread = threading.Thread(target=self._relay, args=(sock,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _relay(self, raw: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(raw.close)
            raw.settimeout(START_TIMEOUT)
            try:
                tls = self.server_context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                return
            stack.callback(tls.close)
            try:
                backend = socket.create_connection(self.backend, timeout=START_TIMEOUT)
            except OSError:
                return
            stack.callback(backend.close)
            tls.settimeout(0.05)
            backend.settimeout(0.05)
            while not self._stopping.is_set():
                moved = False
                for source, sink in ((tls, backend), (backend, tls)):
                    try:
                        data = source.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    sink.sendall(data)
                    moved = True
                if not moved:
                    continue
