"""A small ASGI app for tests/test_httpx_client.py, served by uvicorn in a
subprocess: uploads hashed, redirects, cookies, basic auth, headers echoed."""

from __future__ import annotations

import base64
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route


async def upload(request: Request) -> Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    return JSONResponse(
        {
            "length": length,
            "sha256": digest.hexdigest(),
            "chunked": request.headers.get("transfer-encoding") == "chunked",
        }
    )


async def redirect(request: Request) -> Response:
    hops = int(request.query_params.get("hops", "1"))
    target = "/final" if hops <= 1 else f"/redirect?hops={hops - 1}"
    return RedirectResponse(target, status_code=302)


async def final(request: Request) -> Response:
    return PlainTextResponse("final")


async def set_cookie(request: Request) -> Response:
    response = PlainTextResponse("set")
    response.set_cookie("flavour", "oat")
    return response


async def cookies(request: Request) -> Response:
    return JSONResponse(dict(request.cookies))


async def auth(request: Request) -> Response:
    expected = "Basic " + base64.b64encode(b"user:secret").decode()
    if request.headers.get("authorization") != expected:
        return PlainTextResponse(
            "no", status_code=401, headers={"WWW-Authenticate": 'Basic realm="test"'}
        )
    return PlainTextResponse("yes")


async def headers(request: Request) -> Response:
    return JSONResponse(dict(request.headers))


app = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST", "PUT"]),
        Route("/redirect", redirect),
        Route("/final", final),
        Route("/set-cookie", set_cookie),
        Route("/cookies", cookies),
        Route("/auth", auth),
        Route("/headers", headers),
    ]
)
