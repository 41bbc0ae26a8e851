"""Routes of the web server outside DICOMweb: the probes and the metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from egress.wado.keys import POOL, SETTINGS
from pipeline.metrics import exposition, probes

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response({"status": "ok", "node": settings.node_id})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Whether requests can be served now: the database answers (503 and why, if not). The broker
    is reported, never required: reads do not need it, and STOW-RS spools to the outbox while it
    is away."""
    app = request.app

    async def database() -> None:
        await probes.database_answers(app[POOL])

    async def broker() -> None:
        await probes.broker_answers(app[SETTINGS])

    return await probes.readiness({"database": database}, informational={"broker": broker})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Every web process's metrics, summed (pipeline.metrics), and the web outboxes' backlog."""
    settings = request.app[SETTINGS]

    async def outbox() -> list[exposition.Family]:
        return await asyncio.to_thread(exposition.outbox_families, settings, "web")

    return await probes.metrics_response({"outbox": outbox})
