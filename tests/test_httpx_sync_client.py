"""httpx's own client behaviour over conpool.httpx.Transport (httpx.Client,
threads), against the app under uvicorn that tests/test_httpx_client.py
starts: uploads hashed by the server, redirects, cookies, auth, event hooks
and ``trust_env``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import conpool
import conpool.httpx
from helpers_pool import check_quiet
from servers import unused_port
from test_httpx_client import BODY, Uvicorn, app

pytestmark = pytest.mark.realserver

__all__ = ["app"]  # (the uvicorn fixture, shared with the async tests)


@pytest.fixture
def transport() -> conpool.httpx.Transport:
    return conpool.httpx.Transport()


def test_8_mib_upload_content_length_and_chunked(
    app: Uvicorn, transport: conpool.httpx.Transport
) -> None:
    expect = hashlib.sha256(BODY).hexdigest()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(BODY), 256 * 1024):
            yield BODY[i : i + 256 * 1024]

    with httpx.Client(transport=transport) as client:
        r = client.post(app.url("/upload"), content=BODY)
        assert r.json() == {"length": len(BODY), "sha256": expect, "chunked": False}
        r = client.put(app.url("/upload"), content=chunks())
        assert r.json() == {"length": len(BODY), "sha256": expect, "chunked": True}
        r = client.post(app.url("/upload"), content=b"tiny")
        assert r.json()["sha256"] == hashlib.sha256(b"tiny").hexdigest()
        r = client.post(app.url("/upload"))
        assert r.json()["length"] == 0
        (ep,) = check_quiet(transport.pool).endpoints.values()
        assert (ep.created, ep.reused) == (1, 3)


def test_redirects(app: Uvicorn, transport: conpool.httpx.Transport) -> None:
    with httpx.Client(transport=transport, follow_redirects=True) as client:
        r = client.get(app.url("/redirect?hops=3"))
        assert r.status_code == 200 and r.text == "final"
        assert [h.status_code for h in r.history] == [302, 302, 302]
        (ep,) = check_quiet(transport.pool).endpoints.values()
        assert (ep.created, ep.reused) == (1, 3)
    with httpx.Client(transport=conpool.httpx.Transport(), max_redirects=1) as client:
        with pytest.raises(httpx.TooManyRedirects):
            client.get(app.url("/redirect?hops=3"), follow_redirects=True)


def test_cookies(app: Uvicorn, transport: conpool.httpx.Transport) -> None:
    with httpx.Client(transport=transport) as client:
        client.get(app.url("/set-cookie"))
        assert client.cookies["flavour"] == "oat"
        assert client.get(app.url("/cookies")).json() == {"flavour": "oat"}


def test_auth(app: Uvicorn, transport: conpool.httpx.Transport) -> None:
    with httpx.Client(transport=transport) as client:
        assert client.get(app.url("/auth")).status_code == 401
        r = client.get(app.url("/auth"), auth=("user", "secret"))
        assert (r.status_code, r.text) == (200, "yes")
        assert client.get(app.url("/auth"), auth=httpx.BasicAuth("user", "no")).status_code == 401


def test_event_hooks(app: Uvicorn, transport: conpool.httpx.Transport) -> None:
    seen: list[str] = []

    def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.url.path}")

    def on_response(response: httpx.Response) -> None:
        response.read()
        seen.append(f"response {response.status_code} {response.text}")

    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [on_request],
        "response": [on_response],
    }
    with httpx.Client(transport=transport, event_hooks=hooks) as client:
        client.get(app.url("/final"))
    assert seen == ["request /final", "response 200 final"]


def test_trust_env(
    app: Uvicorn,
    transport: conpool.httpx.Transport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As for the async transport: the client's trust_env does not apply to
    a transport it is given; the transport's own does, read when it is made
    (the fixture's, before the variables were set)."""
    refused = f"http://127.0.0.1:{unused_port()}"
    for name in ("HTTPS_PROXY", "ALL_PROXY", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", refused)
    monkeypatch.setenv("http_proxy", refused)
    with httpx.Client(transport=transport, trust_env=True) as client:
        assert client.get(app.url("/final")).text == "final"
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login user password secret\n")
        r = client.get(app.url("/auth"), auth=httpx.NetRCAuth(str(netrc)))
        assert (r.status_code, r.text) == (200, "yes")
        (ep,) = check_quiet(transport.pool).endpoints.values()
        assert (ep.created, ep.reused) == (1, 1)
    ignoring = conpool.httpx.Transport(trust_env=False)
    with httpx.Client(transport=ignoring, trust_env=True) as client:
        assert client.get(app.url("/final")).text == "final"
        assert list(ignoring.pools) == [None]
    trusting = conpool.httpx.Transport()
    with httpx.Client(transport=trusting, trust_env=False) as client:
        with pytest.raises(httpx.ConnectError, match=f"via {refused}"):
            client.get(app.url("/final"))


def test_headers_reach_the_server(app: Uvicorn, transport: conpool.httpx.Transport) -> None:
    with httpx.Client(transport=transport, headers={"X-Trace": "abc"}) as client:
        got = client.get(app.url("/headers"), params={"q": "1"}).json()
        assert got["x-trace"] == "abc"
        assert got["host"] == f"127.0.0.1:{app.port}"
