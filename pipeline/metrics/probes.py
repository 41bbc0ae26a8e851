"""``/metrics``, ``/ready`` and ``/health`` of a service without a web server of its own (the
worker, the SCP), on a small HTTP listener of its own; and the readiness checks the web server
shares.

``/health``: the process runs. ``/ready``: it can do its work now (each check under a short
timeout); 503 with the reason of each failing check otherwise, as JSON.

The SCP's processes share one listening socket, bound once and handed down as its DICOM port is
(``pipeline.listeners``, never ``SO_REUSEPORT``, which would let another install share the port):
the kernel hands a scrape to any of them, and each answers for all (``exposition``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient

from pipeline import log
from pipeline.metrics import exposition
from pipeline.retries import describe
from pipeline.settings import Settings

_log = log.get(__name__)
CHECK_TIMEOUT_S = 2.0
Check = Callable[[], Awaitable[None]]
"""Returns when what it checks is usable; raises, saying why, when not."""


async def database_answers(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
        await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT_S)


async def broker_answers(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000)
    )
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()


async def readiness(
    checks: Mapping[str, Check], informational: Mapping[str, Check] | None = None
) -> web.Response:
    """200 when every check passes; else 503 naming each that fails and why. ``informational``:
    checks whose outcome the body reports (``"ok"`` or why not) but which never make it 503."""
    informational = informational or {}

    async def one(check: Check) -> str | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S * 2):
                await check()
        except Exception as exc:
            return describe(exc) or type(exc).__name__
        return None

    every = {**checks, **informational}
    results = dict(zip(every, await asyncio.gather(*(one(c) for c in every.values())), strict=True))
    failing = {name: reason for name, reason in results.items() if reason is not None and name in checks}
    body: dict[str, object] = (
        {"status": "not ready", "failing": failing}
        if failing
        else {"status": "ready", "checks": sorted(checks)}
    )
    if informational:
        body["informational"] = {name: results[name] or "ok" for name in informational}
    return web.json_response(body, status=503 if failing else 200)


async def metrics_response(sources: Mapping[str, exposition.Source]) -> web.Response:
    families = await exposition.gather(dict(sources))
    body = await asyncio.to_thread(exposition.render, families)
    return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE})


def application(
    service: str, checks: Mapping[str, Check], sources: Mapping[str, exposition.Source]
) -> web.Application:
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    async def ready(request: web.Request) -> web.Response:
        return await readiness(checks)

    async def metrics(request: web.Request) -> web.Response:
        return await metrics_response(sources)

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app


async def start(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    _log.info("metrics_listening", port=sock.getsockname()[1])
    return runner
