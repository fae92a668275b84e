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


def settle_malloc() -> None:
    """Give every client process the same allocator state.

    asyncio's socket transports read with ``recv(256 KiB)``.  glibc serves
    an allocation that large with ``mmap`` until a large block has been
    freed once (then it raises its threshold and uses the heap), so a small
    process (raw asyncio streams) paid an ``mmap`` + ``mremap`` + ``munmap``
    per read, 10-30 µs depending on the kernel's state, while a process that
    had imported more (a pool) did not.  Freeing one 1 MiB block first puts
    every cell in the second case, which is also where any real
    application is.
    """
    block = bytes(1 << 20)
    del block


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.cell SPEC_JSON", file=sys.stderr)
        return 2
    spec = CellSpec.from_json(argv[0])
    pinned = pin(spec.cpu)
    settle_malloc()
    metrics = registry()[spec.cell.workload].run(spec)
    print(json.dumps({"metrics": metrics, "pinned": pinned}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
