"""CORS (``egress.wado.cors``) over real HTTP: which origins are answered, preflights, and the headers
on every kind of answer (errors and streamed ones included)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import ClientSession, hdrs, web
from aiohttp.test_utils import TestServer

from egress.wado.cors import ALLOWED_HEADERS, EXPOSED_HEADERS, cors
from egress.wado.errors import NotFound, errors

VIEWER = "https://viewer.example.org"
Check = Callable[[ClientSession, str], Awaitable[None]]


async def _plain(request: web.Request) -> web.Response:
    return web.Response(text="plain")


async def _missing(request: web.Request) -> web.Response:
    raise NotFound("no such study")


async def _streamed(request: web.Request) -> web.StreamResponse:
    # Headers go out at prepare(): whatever a handler returns afterwards is too late for them.
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"frame")
    await response.write_eof()
    return response


def _serve(origins: tuple[str, ...], check: Check) -> None:
    async def main() -> None:
        app = web.Application()
        app.middlewares.extend([cors(app, origins), errors])  # the order create_app uses
        app.router.add_get("/dicomweb/plain", _plain)
        app.router.add_get("/dicomweb/missing", _missing)
        app.router.add_get("/dicomweb/streamed", _streamed)
        async with TestServer(app) as server, ClientSession() as client:
            await check(client, str(server.make_url("")).rstrip("/"))

    asyncio.run(main())


def test_an_allowed_origin_is_echoed_on_every_kind_of_answer() -> None:
    async def check(client: ClientSession, base: str) -> None:
        for path, status in (
            ("/dicomweb/plain", 200),
            ("/dicomweb/missing", 404),
            ("/dicomweb/streamed", 200),
        ):
            async with client.get(base + path, headers={hdrs.ORIGIN: VIEWER}) as response:
                assert response.status == status, path
                assert response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == VIEWER, path
                assert response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] == EXPOSED_HEADERS
                # Caches must keep one answer per origin.
                assert "Origin" in response.headers.getall(hdrs.VARY), path

    _serve((VIEWER, "http://other.test"), check)


def test_another_origin_or_none_gets_no_cors_headers() -> None:
    async def check(client: ClientSession, base: str) -> None:
        for headers in ({hdrs.ORIGIN: "https://evil.example"}, {hdrs.ORIGIN: VIEWER + ":8443"}, {}):
            async with client.get(base + "/dicomweb/plain", headers=headers) as response:
                assert response.status == 200  # CORS is the browser's to enforce; the answer is the same
                assert hdrs.ACCESS_CONTROL_ALLOW_ORIGIN not in response.headers, headers
                assert hdrs.ACCESS_CONTROL_EXPOSE_HEADERS not in response.headers, headers

    _serve((VIEWER,), check)


def test_any_origin_is_a_star_with_no_vary() -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/dicomweb/streamed", headers={hdrs.ORIGIN: "https://any.example"}) as r:
            assert r.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == "*"
            assert "Origin" not in r.headers.getall(hdrs.VARY, [])

    _serve(("*",), check)


def test_preflight_of_an_allowed_origin() -> None:
    async def check(client: ClientSession, base: str) -> None:
        preflight = {
            hdrs.ORIGIN: VIEWER,
            hdrs.ACCESS_CONTROL_REQUEST_METHOD: "GET",
            hdrs.ACCESS_CONTROL_REQUEST_HEADERS: "accept, authorization",
        }
        # Any path, routed for OPTIONS or not: the preflight is answered before routing matters.
        for path in ("/dicomweb/plain", "/dicomweb/studies/1.2.3/series"):
            async with client.options(base + path, headers=preflight) as response:
                assert response.status == 204, path
                assert response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == VIEWER
                methods = response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS]
                assert methods == "GET, HEAD, POST, DELETE, OPTIONS"
                assert response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] == ALLOWED_HEADERS
                assert response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] == "600"

    _serve((VIEWER,), check)


def test_preflight_of_another_origin_is_refused() -> None:
    async def check(client: ClientSession, base: str) -> None:
        preflight = {hdrs.ORIGIN: "https://evil.example", hdrs.ACCESS_CONTROL_REQUEST_METHOD: "GET"}
        async with client.options(base + "/dicomweb/plain", headers=preflight) as response:
            assert response.status == 403
            assert hdrs.ACCESS_CONTROL_ALLOW_ORIGIN not in response.headers
            assert hdrs.ACCESS_CONTROL_ALLOW_METHODS not in response.headers

    _serve((VIEWER,), check)


def test_an_options_request_that_is_no_preflight_is_routed_as_usual() -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.options(base + "/dicomweb/plain", headers={hdrs.ORIGIN: VIEWER}) as response:
            assert response.status == 405  # the route has no OPTIONS: not a silent 204
            assert response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == VIEWER

    _serve((VIEWER,), check)
