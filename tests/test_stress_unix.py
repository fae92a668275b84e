"""``conpool stress --target unix:/path``: the stress command against a real
redis-server listening on a Unix socket, the latency proxies included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conpool.stress import cli, runner
from servers import RedisServer, socket_directory

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.realserver
def test_target_unix_socket_redis(tmp_path: Path) -> None:
    with socket_directory() as directory:
        path = directory / "redis.sock"
        with RedisServer(directory / "redis", unix_socket=path) as redis:
            out = tmp_path / "results.json"
            proc = subprocess.run(
                [
                    sys.executable, "-m", "conpool", "stress",
                    "--target", f"unix:{path}",
                    "--protocol", "redis",
                    "--duration", "0.3",
                    "--concurrency", "8",
                    "--scenarios", "limit-1,limit-16,slow-address",
                    "--out", str(tmp_path / "report.html"),
                    "--json", str(out),
                ],
                capture_output=True,
                text=True,
                timeout=50,
                cwd=ROOT,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr + proc.stdout
            assert redis.ping(unix=True)
    results = json.loads(out.read_text())
    assert [s["name"] for s in results["scenarios"]] == ["limit-1", "limit-16", "slow-address"]
    assert all(s["requests"]["errors"] == 0 for s in results["scenarios"])
    assert all(s["requests"]["ok"] > 0 for s in results["scenarios"])
    assert results["options"]["target"] == f"unix:{path}"


def test_target_unix_parses_and_plans() -> None:
    args = cli.build_parser().parse_args(["--target", "unix:/run/x.sock", "--protocol", "redis"])
    _chosen, _skipped, target = cli._plan(args, 1.0)
    assert target == runner.Target("/run/x.sock", 0, "redis")


def test_target_unix_missing_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conpool", "stress", "--target", "unix:/nonexistent/x.sock",
         "--quick", "--out", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "cannot connect to --target unix:/nonexistent/x.sock" in proc.stderr
