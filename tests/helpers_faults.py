"""Network faults on loopback with iptables (root only).

Each rule matches TCP SYNs to one address and port, so connections that are
already open are left alone, and carries the comment ``conpool-test`` so a
cleanup can find any rule a crashed run left behind
(:func:`remove_stray_rules`).  Rules are added with ``-A`` and removed with
``-D`` on the exact same specification, never by flushing a chain.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from types import TracebackType
from typing import Self

from servers import need

TAG = "conpool-test"
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def _binary_for(ip: str) -> str:
    return "ip6tables" if ":" in ip else "iptables"


def _run(binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail when another run holds it.
    return subprocess.run(
        [binary, "-w", "5", *args], capture_output=True, text=True, timeout=15, check=check
    )


class IptablesRule:
    """One ``OUTPUT`` rule for TCP SYNs to ``ip:port``; ``target`` is what to
    do with them (``["-j", "DROP"]``).  Use it as a context manager, or call
    :meth:`add` and :meth:`remove` (both idempotent) to lift the fault mid-test.
    """

    def __init__(self, ip: str, port: int, target: list[str]) -> None:
        self.binary = need(_binary_for(ip), "fault injection with iptables")
        prefix = 128 if ":" in ip else 32
        self.spec = [
            "OUTPUT",
            "-d", f"{ip}/{prefix}",
            "-p", "tcp",
            "--dport", str(port),
            "--syn",
            "-m", "comment", "--comment", TAG,
            *target,
        ]  # fmt: skip
        self.added = False

    def add(self) -> None:
        if not self.added:
            _run(self.binary, "-A", *self.spec)
            self.added = True

    def remove(self) -> None:
        if self.added:
            _run(self.binary, "-D", *self.spec)
            self.added = False

    def present(self) -> bool:
        """Whether the kernel has this rule now (``iptables -C``)."""
        return _run(self.binary, "-C", *self.spec, check=False).returncode == 0

    def __enter__(self) -> Self:
        self.add()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<IptablesRule {shlex.join(self.spec)} added={self.added}>"


def drop_syns(ip: str, port: int) -> IptablesRule:
    """Connects to ``ip:port`` hang until the client's timeout (SYNs vanish)."""
    return IptablesRule(ip, port, ["-j", "DROP"])


def reset_syns(ip: str, port: int) -> IptablesRule:
    """Connects to ``ip:port`` are refused at once (answered with a TCP reset)."""
    return IptablesRule(ip, port, ["-j", "REJECT", "--reject-with", "tcp-reset"])


def remove_stray_rules() -> int:
    """Delete every ``OUTPUT`` rule tagged :data:`TAG`; return how many there were."""
    removed = 0
    for name in ("iptables", "ip6tables"):
        binary = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
        if binary is None:
            continue
        listing = _run(binary, "-S", "OUTPUT", check=False)
        if listing.returncode != 0:
            continue
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if words[:2] == ["-A", "OUTPUT"] and TAG in words:
                _run(binary, "-D", *words[1:])
                removed += 1
    return removed
