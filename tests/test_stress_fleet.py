"""The ``fleet`` scenario of ``conpool stress``: N real processes sharing one
RedisBudget against the embedded echo server, which counts its concurrent
connections; with a real redis-server (started by ``conpool stress`` itself,
or given with ``--redis-url``), and skipped with its reason at the top of the
report when there is none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conpool.stress import analysis, cli, fleet, measure
from servers import RedisServer, need

ROOT = Path(__file__).resolve().parent.parent


def _stress(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    html, results = tmp_path / "report.html", tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "conpool",
            "stress",
            "--out",
            str(html),
            "--json",
            str(results),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc, json.loads(results.read_text()), html.read_text()


def _without_redis_server(tmp_path: Path) -> dict[str, str]:
    """The environment with a PATH on which there is no redis-server."""
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return {**os.environ, "PATH": str(empty)}


@pytest.mark.realserver
def test_fleet_never_exceeds_the_budget_and_every_process_works(tmp_path: Path) -> None:
    need("redis-server", "the fleet scenario's Redis")
    processes = 3
    limit = fleet.budget_limit(processes)
    assert limit < processes * fleet.PER_PROCESS_LIMIT  # the budget binds
    start = time.monotonic()
    _proc, results, html = _stress(
        tmp_path, "--scenarios", "fleet", "--duration", "1", "--fleet-processes", str(processes)
    )
    took = time.monotonic() - start
    assert results["skipped"] == []
    (r,) = results["scenarios"]
    f = r["fleet"]
    print(
        f"fleet run took {took:.1f} s; server max {f['server']['max']} (budget {limit}); "
        f"shares {[p['share'] for p in f['per_process']]}; budget {f['budget']}"
    )
    assert f["limit"] == limit and f["processes"] == processes
    # Every accept and close counted at the server: the most it ever had open at once.
    assert 1 <= f["server"]["max"] <= limit, f["server"]
    assert max(f["server"]["peak"]) == f["server"]["max"]
    assert len(f["server"]["t_s"]) >= 5
    # Every process made progress, none starved (a quarter of a fair share at least).
    assert len(f["per_process"]) == processes
    total = r["requests"]["ok"]
    assert total == sum(p["requests"] for p in f["per_process"])
    for p in f["per_process"]:
        assert p["errors"] == 0, r["errors"]
        assert p["requests"] >= total / processes / 4, f["per_process"]
        assert p["max_open"] <= fleet.PER_PROCESS_LIMIT
    assert len({p["pid"] for p in f["per_process"]}) == processes
    # The budget bound (the fleet reached its limit: dials waited for it, or
    # waited in their pool's line and took a connection released first),
    # and every dial had a lease.
    b = f["budget"]
    assert b["waited"] > 0 or f["server"]["max"] == limit, (b, f["server"])
    # (A lease granted to a dial that a released connection served meanwhile
    # goes to the pool's next dial waiting for budget, or back to the fleet
    # when none waits: granted may exceed what was dialled, never fall short.)
    assert b["granted"] >= r["connections"]["created"] == r["pool_stats"]["created"]
    assert r["server"]["accepted"] == {"127.0.0.11": r["connections"]["created"]}
    assert b["denied"] == b["redis_errors"] == b["unaccounted"] == 0, b
    # Redis counted the round trips: at least one EVALSHA per granted dial.
    assert f["redis_calls"].get("evalsha", 0) >= b["granted"], f["redis_calls"]
    assert f["redis"].startswith("redis-server ")
    # The breakdown: waiting for the budget is a part of its own, and the
    # parts still add up to the measured time of every request.
    bd = r["breakdown"]
    assert bd["requests"] == total
    assert bd["mean_ms"]["budget"] > 0
    assert bd["max_gap_ns"] == 0
    assert r["trace"]["kinds"]["budget.granted"] == b["granted"]
    # The report's section.
    assert 'id="fleet-fleet"' in html
    assert "never more than the budget of" in html
    assert html.count('<tr data-process="') == processes
    assert 'id="fleet-server-fleet"' in html and 'id="fleet-rps-fleet"' in html
    assert "waiting for the fleet budget" in html
    assert "Redis calls" in html


def test_fleet_is_skipped_with_its_reason_without_redis_server(tmp_path: Path) -> None:
    proc, results, html = _stress(
        tmp_path,
        "--scenarios",
        "fleet,limit-16",
        "--duration",
        "0.3",
        env=_without_redis_server(tmp_path),
    )
    assert [s["name"] for s in results["scenarios"]] == ["limit-16"]
    (skip,) = results["skipped"]
    assert skip["name"] == "fleet"
    assert "redis-server is not on PATH" in skip["reason"] and "--redis-url" in skip["reason"]
    assert "not run: fleet" in proc.stderr
    # Listed at the top: before the summary table.
    top = html.index('id="skipped"')
    assert top < html.index("<table"), "the skipped scenarios must come first"
    assert "redis-server is not on PATH" in html[top : top + 2000]
    # The other scenarios show no budget part.
    assert "waiting for the fleet budget" not in html


@pytest.mark.realserver
def test_redis_url_points_the_fleet_at_a_given_redis(redis: RedisServer, tmp_path: Path) -> None:
    url = f"redis://{redis.host}:{redis.port}/0"
    _proc, results, _html = _stress(
        tmp_path,
        *("--scenarios", "fleet", "--duration", "0.5", "--fleet-processes", "2"),
        *("--redis-url", url),
        env=_without_redis_server(tmp_path),  # so it cannot start one of its own
    )
    (r,) = results["scenarios"]
    f = r["fleet"]
    assert f["redis"] == url
    assert results["options"]["redis_url"] == url
    assert f["server"]["max"] <= f["limit"] == fleet.budget_limit(2)
    assert all(p["requests"] > 0 for p in f["per_process"])
    assert redis.ping()  # the user's Redis is left running


def test_bad_fleet_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        (["--fleet-processes", "0"], "must be between 1 and 64"),
        (["--fleet-processes", "x"], "not a whole number"),
        (["--redis-url", "http://x"], "expected redis://"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args(args)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.realserver
def test_redis_process_starts_answers_and_stops_by_pid() -> None:
    binary = need("redis-server", "RedisProcess")
    with fleet.RedisProcess(binary) as server:
        pid = server.pid
        assert pid is not None
        assert fleet._ping(server.HOST, server.port)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.version
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: gone


def test_budget_part_of_a_request() -> None:
    """From the slot's grant to the fleet's lease is the budget part; the rest
    of the acquire stays the pool's."""
    req = measure.Requests()
    ms = 1_000_000
    row = {"start": 0, "got": 10 * ms, "xend": 12 * ms, "end": 12 * ms, "wait": 2 * ms}
    row |= {"resume": 0, "budget": 5 * ms, "resolve": 0, "dial": ms, "tls": 0}
    row |= {"failures": 0, "conn": 1, "addr": req.address_index("10.0.0.1")}
    for name in measure.Requests.FIELDS:
        req.column(name).append(row[name])
    probe = measure.LoopProbe(0)
    parts = analysis.request_parts(req, probe)
    assert parts["budget"] == [5 * ms]
    assert parts["connect"] == [ms]
    assert parts["pool"] == [2 * ms]
    assert sum(parts[p][0] for p in analysis.PARTS) == parts["total"][0] == 12 * ms
