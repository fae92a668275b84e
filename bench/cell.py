"""A client process: ``python -m bench.cell SPEC_JSON`` measures one cell.

It pins itself to the core the harness chose, runs the workload's
measurement and prints ``{"metrics": {...}}`` as the last line of stdout.
It imports only the workloads (each loads what its cell needs in ``run``),
not the harness.
"""

from __future__ import annotations

import json
import sys

from bench.base import CellSpec
from bench.procs import pin
from bench.registry import WORKLOADS


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.cell SPEC_JSON", file=sys.stderr)
        return 2
    spec = CellSpec.from_json(argv[0])
    pinned = pin(spec.cpu)
    # asyncio's transports read with recv(256 KiB); glibc serves that with
    # mmap until a large block has been freed once, so a small process (raw
    # streams) paid an mmap + munmap per read (10-30 µs) that a process which
    # had imported more (a pool) did not.  One freed 1 MiB block puts every
    # client in the second case, where any real application is.
    block = bytes(1 << 20)
    del block
    metrics = WORKLOADS[spec.cell.workload].run(spec)
    print(json.dumps({"metrics": metrics, "pinned": pinned}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
