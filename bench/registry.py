"""Every workload, in the order the report prints them.

Adding a workload is one module with a :class:`bench.base.Workload`
subclass, and one line here.
"""

from __future__ import annotations

from bench.acquire import Acquire
from bench.base import Workload
from bench.budget_workload import Budget
from bench.contended import Contended
from bench.echo import Echo
from bench.hold import Hold
from bench.http import Http
from bench.httpx_workload import Httpx
from bench.memory import Memory
from bench.scale import Scale
from bench.sweep import Sweep
from bench.sync import Sync
from bench.tracing import Tracing

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Echo(),
        Acquire(),
        Contended(),
        Http(),
        Httpx(),
        Scale(),
        Sweep(),
        Memory(),
        Hold(),
        Tracing(),
        Budget(),
        Sync(),
    )
}
