"""The README's examples run, and print what the README says they print."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servers import POOL_ADDRESSES, EchoServer, NginxServer, RedisServer, unused_port

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_the_first_example_talks_to_redis(redis: RedisServer) -> None:
    (code,) = [b for b in blocks("python") if "6379" in b]
    out = run(code.replace("6379", str(redis.port)))
    assert out == "b'+PONG\\r\\n'\n"


def test_the_balancing_example_prints_what_the_readme_shows() -> None:
    (code,) = [b for b in blocks("python") if "StaticResolver" in b and "httpx" not in b]
    printed = README.read_text().split(code, 1)[1]
    (expected,) = re.findall(r"```\n(127\.0\.0\.11.*?)```", printed, flags=re.S)[:1]
    port = unused_port(extra_hosts=tuple(POOL_ADDRESSES))
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(EchoServer(ip, port)) for ip in POOL_ADDRESSES]
        out = run(code.replace("8080", str(port)))
    assert out == expected
    assert [s.accepted for s in servers] == [2, 2, 2, 2]


@pytest.mark.parametrize("command", ["scripts/stress", "scripts/test"])
def test_the_two_commands_exist_and_are_executable(command: str) -> None:
    assert f"{command} " in README.read_text().split("\n## ", 1)[0]
    path = README.parent / command
    assert path.is_file() and path.stat().st_mode & 0o111


def test_the_httpx_example_spreads_over_four_addresses(nginx4: NginxServer) -> None:
    (code,) = [b for b in blocks("python") if "conpool.httpx.AsyncTransport" in b]
    out = run(code.replace(":8080/", f":{nginx4.port}/"))
    assert out == str(sorted(POOL_ADDRESSES)) + "\n"
    assert len(nginx4.wait_for_log(64)) == 64
