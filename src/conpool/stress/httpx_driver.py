"""The ``httpx`` scenario: ``httpx.AsyncClient`` over
:class:`conpool.httpx.AsyncTransport`, next to the minimal client's ``http``.

Both send ``GET /`` to the embedded HTTP server on the four addresses with
the same pool configuration, so the difference between them is what a real
HTTP client costs on top of the pool.  httpx is an optional extra: without
it the ``httpx`` scenario is skipped, with the reason at the top of the
report (:func:`unavailable_reason`), and ``http`` still runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import conpool

from .measure import Slot
from .protocols import Protocol, ProtocolError
from .runner import DRIVERS, Request
from .scenarios import Scenario, register

__all__ = ["BASELINE", "NAME", "httpx_driver", "unavailable_reason"]

NAME = "httpx"
BASELINE = "http"
#: The pool configuration of both scenarios.
CONFIG = {"max_connections_per_endpoint": 16}


def unavailable_reason() -> str | None:
    """Why the ``httpx`` scenario cannot run here (None: it can)."""
    try:
        import conpool.httpx  # noqa: F401 (the optional extra: imported only here)
    except ImportError as exc:
        return f"needs the httpx extra (pip install 'conpool[httpx]'): {exc}"
    return None


@contextlib.asynccontextmanager
async def httpx_driver(
    pool: conpool.Pool, endpoint: conpool.Endpoint, proto: Protocol
) -> AsyncIterator[Request]:
    """One ``httpx.AsyncClient`` on the scenario's pool, shared by every client
    task.  The transport holds the connection, not the driver: the hand-out
    and release times come from the trace."""
    # The optional extra: imported only when the scenario runs.
    import httpx

    import conpool.httpx

    url = f"http://{endpoint.host}:{endpoint.port}/"
    transport = conpool.httpx.AsyncTransport(pool=pool)
    # trust_env=False: no proxy or netrc from the environment; the pool
    # decides where connections go.  No client-side timeout either: the
    # runner bounds every request itself.
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=None) as client:

        async def request(slot: Slot) -> tuple[str, int]:
            response = await client.get(url)
            if response.status_code != 200:
                raise ProtocolError(f"HTTP status {response.status_code} from {url}")
            return "", 0

        yield request


DRIVERS[NAME] = httpx_driver


@register
def _scenarios(duration: float, target: bool) -> list[Scenario]:
    if target:
        return []  # the embedded HTTP server on four addresses only
    return [
        Scenario(
            name=BASELINE,
            title="HTTP, minimal client (baseline for httpx)",
            group="httpx",
            description=(
                "GET / with keep-alive to the embedded HTTP server on the four addresses, "
                "written straight onto pool.connection() by the stress tool's minimal "
                "client: the baseline the httpx scenario is compared with."
            ),
            port="http",
            protocol="http",
            config=dict(CONFIG),
            embedded_only=True,
        ),
        Scenario(
            name=NAME,
            title="httpx.AsyncClient over conpool.httpx.AsyncTransport",
            group="httpx",
            description=(
                "The same GET / load through one httpx.AsyncClient whose transport is "
                "conpool.httpx.AsyncTransport on the scenario's pool: what a real HTTP "
                "client costs on top of the pool. The client never shows the runner its "
                "connection, so the pool's hand-out and release (from the trace) split the "
                "request: httpx's own work before and after the transport holds the "
                "connection counts as the pool's own work."
            ),
            port="http",
            protocol="http",
            config=dict(CONFIG),
            embedded_only=True,
            driver=NAME,
        ),
    ]
