"""The web server's application and its process."""

from __future__ import annotations

from aiohttp import web

from egress.wado.keys import SETTINGS
from egress.wado.routes import routes
from pipeline import lifecycle, log
from pipeline.errors import PacsflowError
from pipeline.settings import Settings

_log = log.get(__name__)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.add_routes(routes)
    return app


async def serve(settings: Settings) -> None:
    stop = lifecycle.stop_on_signals()
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    # reuse_port: several web processes can share the port when one core is not enough.
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PacsflowError(
            f"cannot listen on {settings.http_host}:{settings.http_port} ({exc.strerror}): stop what "
            "holds the port or set PACSFLOW_HTTP_PORT"
        ) from exc
    _log.info("web_listening", host=settings.http_host, port=settings.http_port)
    lifecycle.notify_ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        _log.info("web_stopped")
