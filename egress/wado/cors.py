"""CORS for viewers served from another origin (a hospital's own OHIF): preflights, and the headers
on every answer, errors included.

The headers are added when a response is prepared, not when a handler returns: a streamed answer
(multipart frames) has sent its headers by then."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOWED_HEADERS = "Accept, Authorization, Content-Type, If-None-Match, X-Request-ID"
EXPOSED_HEADERS = (
    "Content-Type, Content-Length, Content-Encoding, ETag, Warning, WWW-Authenticate, X-Request-ID"
)


def cors(app: web.Application, origins: tuple[str, ...]) -> Middleware:
    """The preflight middleware; the headers of every other answer are added on prepare."""
    anyone = origins == ("*",)

    def allowed(origin: str | None) -> str | None:
        if origin is None:
            return None
        return "*" if anyone else origin if origin in origins else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = allowed(request.headers.get(hdrs.ORIGIN))
        if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            response: web.StreamResponse = web.Response(status=204 if origin else 403)
            if origin:
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = "GET, HEAD, POST, DELETE, OPTIONS"
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOWED_HEADERS
                response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = "600"
            return response
        return await handler(request)

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        origin = allowed(request.headers.get(hdrs.ORIGIN))
        if origin:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
            if origin != "*":
                response.headers.add(hdrs.VARY, "Origin")

    app.on_response_prepare.append(mark)
    return middleware
