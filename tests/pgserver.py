"""A real PostgreSQL server on loopback for the PostgreSQL recipe's test.

Debian's ``postgresql`` package puts its binaries in
``/usr/lib/postgresql/VERSION/bin`` (not on ``PATH``). PostgreSQL refuses to run
as root, so as root the cluster belongs to the ``postgres`` user the package
creates and both ``initdb`` and the server run as that user. Trust
authentication on 127.0.0.1 only; stopped by PID with SIGINT (PostgreSQL's
"fast" shutdown, which does not wait for clients to leave).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from servers import LOOPBACK, START_TIMEOUT, Started, skip_or_fail, stop_process, unused_port

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        skip_or_fail("postgresql not installed (run scripts/setup as root): PostgreSQL recipe")
    return Path(found[-1]).parent


class PostgresServer(Started):
    """``postgres`` in the foreground on 127.0.0.1, a fresh cluster in a temp dir."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.host = LOOPBACK
        self.port = unused_port(self.host)
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                skip_or_fail("running as root and there is no 'postgres' user to run PostgreSQL")
            self.user = "postgres"
        # Not pytest's tmp_path: as root that is private to root, and the
        # server runs as `postgres`.
        self.directory = Path(tempfile.mkdtemp(prefix="conpool-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        if self.user is not None:
            shutil.chown(self.directory, self.user, self.user)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            cwd=self.directory, capture_output=True, check=True, timeout=60,
            user=self.user, group=self.user,
        )  # fmt: skip
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-h", self.host,
                 "-p", str(self.port), "-k", str(self.directory), "-F",
                 "-c", "logging_collector=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.directory, start_new_session=True,
                user=self.user, group=self.user,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT * 3  # initdb's first start is slower
        while not self.is_ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def is_ready(self) -> bool:
        """True once it answers an SSLRequest (with ``N``: no TLS configured)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(SSL_REQUEST)
                return sock.recv(1) == b"N"
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, signal.SIGINT)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return super().__enter__()
        except BaseException:
            self.stop()  # removes the cluster directory of a failed initdb
            raise
