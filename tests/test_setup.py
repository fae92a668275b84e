"""scripts/setup's decisions: what it installs, and what it leaves alone.

The script runs for real (bash, in a copy of the repository's layout), with a
``PATH`` whose ``apt-get``, ``dpkg-query``, ``id`` and ``python3`` are small
recorders, and a ``.venv/bin/python`` that records the pip call. No real
package manager is ever run: the recorders come first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

#: Every Debian package the tests need (tinyproxy-bin, microsocks, dante-server: the proxy
#: tests'; postgresql: the PostgreSQL recipe in the docs).
PACKAGES = [
    "nginx-light",
    "redis-server",
    "dnsmasq-base",
    "iptables",
    "chromium",
    "tinyproxy-bin",
    "microsocks",
    "dante-server",
    "postgresql",
]

# dpkg-query -W -f='${Status}' PKG: installed when PKG is a line of $STATE/installed.
FAKE_DPKG_QUERY = r"""#!/bin/sh
echo "dpkg-query $*" >>"$STATE/calls"
for last; do :; done
if grep -qx "$last" "$STATE/installed" 2>/dev/null; then
    printf 'install ok installed'
    exit 0
fi
echo "dpkg-query: no packages found matching $last" >&2
exit 1
"""

# apt-get: noisy like the real one; `install` marks its packages installed, or
# fails when $STATE/apt-fails exists.
FAKE_APT_GET = r"""#!/bin/sh
echo "apt-get $*" >>"$STATE/calls"
echo "Reading package lists... Done"
if [ "$1" = update ]; then
    echo "Hit:1 fake stable InRelease"
    exit 0
fi
if [ -e "$STATE/apt-fails" ]; then
    echo "E: Unable to locate package $*"
    exit 100
fi
for arg; do
    case "$arg" in
        -*|install) ;;
        *) echo "$arg" >>"$STATE/installed"; echo "Setting up $arg (1.0) ..." ;;
    esac
done
"""

FAKE_ID = r"""#!/bin/sh
echo "${FAKE_UID:-0}"
"""

# python3 -m venv .venv: makes a .venv/bin/python that records how it is called;
# with $STATE/no-ensurepip, fails as Debian's does until python3-venv is installed.
FAKE_PYTHON3 = r"""#!/bin/sh
echo "python3 $*" >>"$STATE/calls"
if [ -e "$STATE/no-ensurepip" ] && ! grep -qx python3-venv "$STATE/installed"; then
    echo "The virtual environment was not created successfully because ensurepip is not"
    echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv package"
    exit 1
fi
mkdir -p .venv/bin
cp "$STATE/venv-python" .venv/bin/python
"""

FAKE_VENV_PYTHON = r"""#!/bin/sh
echo "venv-python $*" >>"$STATE/calls"
echo "Collecting anyio (pip noise)"
"""

FAKE_CONPOOL = r"""#!/bin/sh
echo "conpool $*" >>"$STATE/calls"
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]


class Machine:
    """A copy of the repository's scripts and a fake machine to run them on."""

    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "repo"
        self.state = tmp / "state"
        self.bin = tmp / "bin"
        self.state.mkdir()
        shutil.copytree(SCRIPTS, self.repo / "scripts")
        (self.repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        _executable(self.bin / "dpkg-query", FAKE_DPKG_QUERY)
        _executable(self.bin / "apt-get", FAKE_APT_GET)
        _executable(self.bin / "id", FAKE_ID)
        _executable(self.bin / "python3", FAKE_PYTHON3)
        _executable(self.state / "venv-python", FAKE_VENV_PYTHON)
        _executable(self.repo / ".venv" / "bin" / "conpool", FAKE_CONPOOL)
        self.set_installed(PACKAGES)

    def set_installed(self, packages: list[str]) -> None:
        (self.state / "installed").write_text("".join(p + "\n" for p in packages))

    def installed(self) -> list[str]:
        return (self.state / "installed").read_text().split()

    def venv_up_to_date(self) -> None:
        _executable(self.repo / ".venv" / "bin" / "python", FAKE_VENV_PYTHON)
        stamp = self.repo / ".venv" / ".conpool-dev-installed"
        stamp.touch()
        pyproject = self.repo / "pyproject.toml"
        os.utime(pyproject, (stamp.stat().st_mtime - 60,) * 2)

    def run(self, script: str = "setup", *args: str, uid: int = 0) -> Run:
        calls = self.state / "calls"
        calls.write_text("")
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "STATE": str(self.state),
            "FAKE_UID": str(uid),
            "HOME": str(self.state),
        }
        done = subprocess.run(
            ["bash", str(self.repo / "scripts" / script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr, calls.read_text().splitlines())


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    if shutil.which("bash") is None:
        pytest.fail("bash is needed to run scripts/setup")
    m = Machine(tmp_path)
    m.venv_up_to_date()
    return m


def apt_calls(run: Run) -> list[str]:
    return [c for c in run.calls if c.startswith("apt-get")]


def test_nothing_missing_runs_no_apt_and_prints_nothing(machine: Machine) -> None:
    run = machine.run()
    assert run.returncode == 0, run.stderr
    assert (run.stdout, run.stderr) == ("", "")
    assert apt_calls(run) == []
    # It asked dpkg about every package, and pip was not run.
    assert sorted(c.split()[-1] for c in run.calls if c.startswith("dpkg-query")) == sorted(
        PACKAGES
    )
    assert not [c for c in run.calls if c.startswith("venv-python")]


def test_one_missing_package_is_the_only_one_installed(machine: Machine) -> None:
    machine.set_installed([p for p in PACKAGES if p != "iptables"])
    run = machine.run()
    assert run.returncode == 0, run.stderr
    assert apt_calls(run) == [
        "apt-get update",
        "apt-get install -y --no-install-recommends --no-upgrade iptables",
    ]
    # One short line; apt's own chatter went to the log.
    assert (run.stdout, run.stderr) == ("setup: installed iptables\n", "")
    log = (machine.repo / ".venv" / "setup.log").read_text()
    assert "Setting up iptables" in log
    assert sorted(machine.installed()) == sorted(PACKAGES)
    # Run again: all there now, so apt is not touched.
    again = machine.run()
    assert (apt_calls(again), again.stdout, again.stderr) == ([], "", "")


def test_a_fresh_machine_gets_every_package_in_one_install(machine: Machine) -> None:
    machine.set_installed([])
    run = machine.run()
    assert run.returncode == 0, run.stderr
    assert apt_calls(run) == [
        "apt-get update",
        "apt-get install -y --no-install-recommends --no-upgrade " + " ".join(PACKAGES),
    ]
    assert run.stdout.splitlines() == [f"setup: installed {p}" for p in PACKAGES]


def test_not_root_installs_nothing_and_says_what_is_missing(machine: Machine) -> None:
    machine.set_installed([p for p in PACKAGES if p not in ("tinyproxy-bin", "microsocks")])
    run = machine.run(uid=1000)
    assert run.returncode == 0
    assert apt_calls(run) == []
    assert run.stdout == ""
    assert "not root" in run.stderr and "tinyproxy-bin microsocks" in run.stderr
    assert "CI=true" in run.stderr


def test_a_failing_install_shows_apt_output_and_fails(machine: Machine) -> None:
    machine.set_installed([p for p in PACKAGES if p != "chromium"])
    (machine.state / "apt-fails").touch()
    run = machine.run()
    assert run.returncode == 1
    assert "apt-get install chromium failed" in run.stderr
    assert "E: Unable to locate package" in run.stderr  # the log, shown because it failed
    assert run.stdout == ""


def test_python_only_never_asks_about_debian_packages(machine: Machine) -> None:
    machine.set_installed([])
    run = machine.run("setup", "--python-only")
    assert run.returncode == 0, run.stderr
    assert run.calls == []
    assert (run.stdout, run.stderr) == ("", "")


def test_stress_needs_no_debian_package(machine: Machine) -> None:
    machine.set_installed([])
    run = machine.run("stress", "--quick")
    assert run.returncode == 0, run.stderr
    assert run.calls == ["conpool stress --quick"]


def test_pip_runs_only_when_pyproject_is_newer_than_the_stamp(machine: Machine) -> None:
    stamp = machine.repo / ".venv" / ".conpool-dev-installed"
    os.utime(stamp, (stamp.stat().st_mtime - 120,) * 2)  # pyproject.toml changed since
    run = machine.run("setup", "--python-only")
    assert run.returncode == 0, run.stderr
    assert run.calls == ["venv-python -m pip install --quiet -e .[dev]"]
    assert run.stdout == "setup: installed conpool and its dev tools into .venv\n"
    assert "pip noise" not in run.stdout + run.stderr
    again = machine.run("setup", "--python-only")
    assert (again.calls, again.stdout) == ([], "")


def test_a_missing_venv_is_created_then_installed(machine: Machine) -> None:
    shutil.rmtree(machine.repo / ".venv")
    run = machine.run("setup", "--python-only")
    assert run.returncode == 0, run.stderr
    assert run.calls == ["python3 -m venv .venv", "venv-python -m pip install --quiet -e .[dev]"]
    assert run.stdout.splitlines() == [
        "setup: created .venv",
        "setup: installed conpool and its dev tools into .venv",
    ]


def test_a_python_without_venv_gets_python3_venv_as_root(machine: Machine) -> None:
    shutil.rmtree(machine.repo / ".venv")
    (machine.state / "no-ensurepip").touch()
    run = machine.run("setup", "--python-only")
    assert run.returncode == 0, run.stderr
    assert [c for c in run.calls if not c.startswith("dpkg-query")] == [
        "python3 -m venv .venv",
        "apt-get update",
        "apt-get install -y --no-install-recommends --no-upgrade python3-venv",
        "python3 -m venv .venv",
        "venv-python -m pip install --quiet -e .[dev]",
    ]
    assert run.stdout.splitlines() == [
        "setup: installed python3-venv",
        "setup: created .venv",
        "setup: installed conpool and its dev tools into .venv",
    ]


def test_a_python_without_venv_and_no_root_says_what_to_install(machine: Machine) -> None:
    shutil.rmtree(machine.repo / ".venv")
    (machine.state / "no-ensurepip").touch()
    run = machine.run("setup", "--python-only", uid=1000)
    assert run.returncode == 1
    assert apt_calls(run) == []
    assert "python3-venv" in run.stderr and "ensurepip is not" in run.stderr


def test_an_unknown_option_is_refused(machine: Machine) -> None:
    run = machine.run("setup", "--everything")
    assert run.returncode == 2
    assert "unknown option --everything" in run.stderr
    assert run.calls == []


def test_the_dev_extra_carries_the_docs_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["docs"]
    assert set(extras["docs"]) <= set(extras["dev"])
