"""conpool: a protocol-agnostic TCP/TLS client connection pool for anyio.

Connections are pooled per :class:`Endpoint` (a DNS name, a port, optional
TLS), tracked under the name and under the address they were dialled to, and
spread across every address of the name.  What the pool hands out is an
ordinary :class:`anyio.abc.ByteStream`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._balance import POLICIES as POLICIES
from ._budget import BudgetStats as BudgetStats
from ._budget import RedisBudget as RedisBudget
from ._config import Config as Config
from ._connection import Connection as Connection
from ._endpoint import TLS as TLS
from ._endpoint import Endpoint as Endpoint
from ._errors import ConnectError as ConnectError
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolError as PoolError
from ._errors import PoolTimeout as PoolTimeout
from ._errors import ResolveError as ResolveError
from ._export import prometheus_text as prometheus_text
from ._hooks import Hook as Hook
from ._hooks import LogExporter as LogExporter
from ._pool import Pool as Pool
from ._proxy import Proxy as Proxy
from ._proxy import ProxyError as ProxyError
from ._resolve import DNSResolver as DNSResolver
from ._resolve import ResolvedAddress as ResolvedAddress
from ._resolve import Resolver as Resolver
from ._resolve import StaticResolver as StaticResolver
from ._resolve import SyncResolver as SyncResolver
from ._resolve import SystemResolver as SystemResolver
from ._stats import AddressStats as AddressStats
from ._stats import EndpointStats as EndpointStats
from ._stats import HistogramStats as HistogramStats
from ._stats import PoolStats as PoolStats
from ._syncconnection import SyncConnection as SyncConnection
from ._syncpool import SyncPool as SyncPool
from ._trace import Event as Event
from ._trace import Tracer as Tracer

try:
    # One source of truth: the version pyproject.toml gave the installed package.
    __version__ = _version("conpool")
except _PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = (
    "POLICIES",
    "TLS",
    "AddressStats",
    "BudgetStats",
    "Config",
    "ConnectError",
    "Connection",
    "DNSResolver",
    "Endpoint",
    "EndpointStats",
    "Event",
    "HistogramStats",
    "Hook",
    "LogExporter",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "Proxy",
    "ProxyError",
    "RedisBudget",
    "ResolveError",
    "ResolvedAddress",
    "Resolver",
    "StaticResolver",
    "SyncConnection",
    "SyncPool",
    "SyncResolver",
    "SystemResolver",
    "Tracer",
    "__version__",
    "prometheus_text",
)
