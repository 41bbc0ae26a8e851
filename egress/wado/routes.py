"""Routes of the web server."""

from __future__ import annotations

from aiohttp import web

from egress.wado.keys import SETTINGS

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response({"status": "ok", "node": settings.node_id})
