"""A client process: ``python -m bench.cell SPEC_JSON`` measures one cell.

It pins itself to the core the runner chose, runs the workload's measurement
and prints one JSON line, ``{"metrics": {...}}``, as the last line of stdout.
"""

from __future__ import annotations

import json
import os
import sys

from bench.workloads import CellSpec, registry


def pin(cpu: int | None) -> bool:
    """Run on ``cpu`` alone, where the platform allows it."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.cell SPEC_JSON", file=sys.stderr)
        return 2
    spec = CellSpec.from_json(argv[0])
    pinned = pin(spec.cpu)
    metrics = registry()[spec.cell.workload].run(spec)
    print(json.dumps({"metrics": metrics, "pinned": pinned}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
