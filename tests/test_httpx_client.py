"""httpx's own client behaviour over conpool.httpx.AsyncTransport, against an
app under uvicorn that the test starts: uploads hashed by the server
(Content-Length and chunked), redirects, cookies, auth, event hooks and
``trust_env`` (a netrc file), on asyncio, uvloop and trio."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import conpool
import conpool.httpx
from helpers_pool import check_quiet
from servers import can_connect, unused_port, wait_for

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


class Uvicorn:
    """uvicorn serving tests/httpx_app.py on 127.0.0.1, stopped by its PID."""

    def __init__(self) -> None:
        self.port = unused_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "httpx_app:app",
                "--app-dir",
                str(Path(__file__).parent),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        )
        try:
            wait_for(lambda: self._ready(), 15.0, what="uvicorn answering")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {self.proc.returncode}")
        return can_connect("127.0.0.1", self.port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def app() -> Iterator[Uvicorn]:
    server = Uvicorn()
    yield server
    server.stop()


@pytest.fixture
def transport() -> conpool.httpx.AsyncTransport:
    return conpool.httpx.AsyncTransport()


BODY = bytes(range(256)) * (8 * MiB // 256)


async def test_8_mib_upload_content_length_and_chunked(
    app: Uvicorn, transport: conpool.httpx.AsyncTransport
) -> None:
    expect = hashlib.sha256(BODY).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(BODY), 256 * 1024):
            yield BODY[i : i + 256 * 1024]

    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post(app.url("/upload"), content=BODY)
        assert r.json() == {"length": len(BODY), "sha256": expect, "chunked": False}
        r = await client.put(app.url("/upload"), content=chunks())
        assert r.json() == {"length": len(BODY), "sha256": expect, "chunked": True}
        # A small body (head and body in one send) and an empty one.
        r = await client.post(app.url("/upload"), content=b"tiny")
        assert r.json()["sha256"] == hashlib.sha256(b"tiny").hexdigest()
        r = await client.post(app.url("/upload"))
        assert r.json()["length"] == 0
        (ep,) = check_quiet(transport.pool).endpoints.values()
        assert (ep.created, ep.reused) == (1, 3)


async def test_redirects(app: Uvicorn, transport: conpool.httpx.AsyncTransport) -> None:
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        r = await client.get(app.url("/redirect?hops=3"))
        assert r.status_code == 200 and r.text == "final"
        assert [h.status_code for h in r.history] == [302, 302, 302]
    again = conpool.httpx.AsyncTransport()
    async with httpx.AsyncClient(transport=again, max_redirects=1) as client:
        with pytest.raises(httpx.TooManyRedirects):
            await client.get(app.url("/redirect?hops=3"), follow_redirects=True)


async def test_cookies(app: Uvicorn, transport: conpool.httpx.AsyncTransport) -> None:
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(app.url("/set-cookie"))
        assert client.cookies["flavour"] == "oat"
        r = await client.get(app.url("/cookies"))
        assert r.json() == {"flavour": "oat"}


async def test_auth(app: Uvicorn, transport: conpool.httpx.AsyncTransport) -> None:
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(app.url("/auth"))).status_code == 401
        r = await client.get(app.url("/auth"), auth=("user", "secret"))
        assert (r.status_code, r.text) == (200, "yes")
        r = await client.get(app.url("/auth"), auth=httpx.BasicAuth("user", "wrong"))
        assert r.status_code == 401


async def test_event_hooks(app: Uvicorn, transport: conpool.httpx.AsyncTransport) -> None:
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.url.path}")

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        seen.append(f"response {response.status_code} {response.text}")

    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [on_request],
        "response": [on_response],
    }
    async with httpx.AsyncClient(transport=transport, event_hooks=hooks) as client:
        await client.get(app.url("/final"))
    assert seen == ["request /final", "response 200 final"]


async def test_trust_env(
    app: Uvicorn,
    transport: conpool.httpx.AsyncTransport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx applies environment proxies only to its own transports
    (``allow_env_proxies = trust_env and transport is None``): the client's
    trust_env changes nothing here, the transport's own decides, and it reads
    the environment when it is made (the fixture's was made before the
    variables were set; nothing listens at the proxy address, so a request
    sent there fails).  netrc is explicit since httpx 0.24 (NetRCAuth)."""
    refused = f"http://127.0.0.1:{unused_port()}"
    for name in ("HTTPS_PROXY", "ALL_PROXY", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", refused)
    monkeypatch.setenv("http_proxy", refused)
    async with httpx.AsyncClient(transport=transport, trust_env=True) as client:
        assert client.trust_env
        assert (await client.get(app.url("/final"))).text == "final"
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login user password secret\n")
        r = await client.get(app.url("/auth"), auth=httpx.NetRCAuth(str(netrc)))
        assert (r.status_code, r.text) == (200, "yes")
        (ep,) = check_quiet(transport.pool).endpoints.values()
        assert (ep.created, ep.reused) == (1, 1)
    ignoring = conpool.httpx.AsyncTransport(trust_env=False)
    async with httpx.AsyncClient(transport=ignoring, trust_env=True) as client:
        assert (await client.get(app.url("/final"))).text == "final"
        assert list(ignoring.pools) == [None]
    trusting = conpool.httpx.AsyncTransport()
    async with httpx.AsyncClient(transport=trusting, trust_env=False) as client:
        with pytest.raises(httpx.ConnectError, match=f"via {refused}"):
            await client.get(app.url("/final"))


async def test_headers_reach_the_server(
    app: Uvicorn, transport: conpool.httpx.AsyncTransport
) -> None:
    async with httpx.AsyncClient(transport=transport, headers={"X-Trace": "abc"}) as client:
        r = await client.get(app.url("/headers"), params={"q": "1"})
        got = r.json()
        assert got["x-trace"] == "abc"
        assert got["host"] == f"127.0.0.1:{app.port}"
        assert "expect" not in got
