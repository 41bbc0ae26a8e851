"""The web server's application and its process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from egress.auth.guard import JUDGE, expect_token, guard
from egress.auth.keys import IssuerKeys, KeysUnavailable
from egress.auth.tokens import TokenJudge
from egress.viewer import site as viewer
from egress.wado import analytics, capabilities, changefeed, delete, metadata, qido, retrieve, stow
from egress.wado.access_log import (
    ACCESS_LOG,
    STARTED,
    AccessLogger,
    AccessLogPublisher,
    echo_trace_id,
    tracing,
)
from egress.wado.cors import cors
from egress.wado.errors import errors
from egress.wado.keys import BUILDER, CACHE, OUTBOX, POOL, PUBLISHER, SETTINGS
from egress.wado.routes import routes
from egress.wado.urls import PREFIXES
from pipeline import lifecycle, listeners, log
from pipeline.cache import Cache
from pipeline.metrics import folder
from pipeline.metrics.guard import Recording
from pipeline.outbox import Outbox, OutboxPublisher
from pipeline.regeneration import MetadataBuilder
from pipeline.settings import Settings
from pipeline.stores.files import StorageLayout

if TYPE_CHECKING:  # imported by create_app, after serve set the metrics folder (pipeline.metrics)
    from pipeline.metrics.instruments import Routes

_log = log.get(__name__)
_TIMING = Recording("http_request_seconds")
ROUTES: web.AppKey[Routes] = web.AppKey("route_timers")


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app.middlewares.extend([tracing, cors(app, settings.cors_origins), errors])
    if settings.auth == "jwt":
        app.middlewares.append(guard(settings))
        app.cleanup_ctx.append(_auth)
    app.on_response_prepare.append(echo_trace_id)
    app.on_response_prepare.append(_no_sniffing)
    app[SETTINGS] = settings
    from pipeline.metrics import instruments

    app[ROUTES] = instruments.Routes()
    app[stow.COUNTS] = instruments.Stores("stow")
    app[BUILDER] = MetadataBuilder(
        StorageLayout(settings.storage_root),
        settings.public_base,
        settings.default_tenant,
        settings.bulkdata_threshold,
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_cache)
    app.cleanup_ctx.append(_access_log)
    app.cleanup_ctx.append(_outbox)
    app.add_routes(routes)
    # aiohttp tries a path's routes in the order they were added (no two of these match the same
    # path): WADO-RS first, its frames the first of all, as a viewer asks for them most.
    retrieve.add_routes(app, PREFIXES)
    metadata.add_routes(app, PREFIXES)
    qido.add_routes(app, PREFIXES)
    # STOW-RS streams its body with the multipart reader: client_max_size (1 MiB) does not apply.
    stow.add_routes(app, PREFIXES, expect_token(settings) if settings.auth == "jwt" else None)
    delete.add_routes(app, PREFIXES)
    changefeed.add_routes(app, PREFIXES)  # and its LISTEN connection (a cleanup context)
    analytics.add_routes(app)
    viewer.add_routes(app, settings)
    # Last: OPTIONS on every path under a root, and its 404/405 for a path no route above serves.
    capabilities.add_routes(app, PREFIXES)
    return app


async def _no_sniffing(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer is what its Content-Type says: a browser never runs a DICOM file or a JSON
    # error as a script or a page.
    response.headers["X-Content-Type-Options"] = "nosniff"


async def _auth(app: web.Application) -> AsyncIterator[None]:
    """The issuer's keys, fetched once now so that the first request does not wait for them."""
    settings = app[SETTINGS]
    # trust_env: a hospital network often reaches its identity provider only through HTTPS_PROXY.
    async with aiohttp.ClientSession(trust_env=True) as session:
        keys = IssuerKeys(settings, session)
        app[JUDGE] = TokenJudge(settings, keys)
        try:
            await keys.get(None)
        except KeysUnavailable as exc:  # the server starts anyway: the issuer may come up later
            _log.warning("issuer_keys_unavailable_at_start", error=str(exc))
        yield


async def _database(app: web.Application) -> AsyncIterator[None]:
    # min_size=0: the server starts (and answers /health) while the database is still away;
    # requests that need it get 503 until it is back.
    pool = await asyncpg.create_pool(
        app[SETTINGS].database_url, min_size=0, max_size=8, timeout=10, reset=_keep_session
    )
    app[POOL] = pool
    yield
    await pool.close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset when a connection goes back to the pool: the web server leaves no session state
    (no LISTEN, no advisory locks, every transaction ended), and the reset costs each request a
    round trip."""


async def _cache(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cache = Cache(settings.redis_url, settings.redis_prefix)
    await cache.start()
    app[CACHE] = cache
    yield
    await cache.stop()


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    publisher = AccessLogPublisher(app[SETTINGS])
    publisher.start()
    app[ACCESS_LOG] = publisher
    yield
    await publisher.stop()


async def _outbox(app: web.Application) -> AsyncIterator[None]:
    """The outbox of what this process accepts (STOW-RS, DELETE), and its publisher: an answer is
    sent only once its events are spooled here, and they reach Kafka whenever it is there."""
    settings = app[SETTINGS]
    outbox = await asyncio.to_thread(Outbox.open_slot, settings.outbox_dir, "web")
    publisher = OutboxPublisher(settings, outbox)
    app[OUTBOX] = outbox
    app[PUBLISHER] = publisher
    publishing = asyncio.create_task(publisher.run(), name="outbox-publisher")
    yield
    await publisher.stop()
    publishing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await publishing
    outbox.close()


class TimedAccessLogger(AccessLogger):
    """The access log, and each request's time in ``pacsflow_http_request_seconds``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        if isinstance(request, web.Request):
            started = request.get(STARTED)
            # Not aiohttp's duration: uvloop's clock counts whole milliseconds (see access_log).
            seconds = time.perf_counter() - started if started is not None else duration
            with _TIMING:  # neither the answer nor its log line depends on the metric's file
                request.app[ROUTES].observe(request.match_info.route.resource, request.method, seconds)
        super().log(request, response, duration)


class _NoRequestBytes(logging.Filter):
    """aiohttp logs a request it cannot parse with the bytes it choked on: an oversized
    ``Authorization`` header would put a bearer token in the log. Keep the kind of fault, not the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if isinstance(fault, HttpProcessingError):
            record.msg, record.args = "http_request_refused: %s (%s)", (type(fault).__name__, fault.code)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_PROTOCOL_LOG = logging.getLogger("pacsflow.http")
_PROTOCOL_LOG.addFilter(_NoRequestBytes())


def _open_files_to_the_hard_limit() -> None:
    """A study's retrieve holds all its files open from before its first byte (``retrieve``): a
    3,000-image study needs 3,000 descriptors, and systemd's default soft limit is 1,024. Any
    process may raise its soft limit to the hard one, as systemd asks programs that need it to."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return  # an unlimited hard limit is capped by the kernel's nr_open: leave it to the admin
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        _log.warning("open_files_limit_kept", soft=soft, hard=hard, error=str(exc))


async def serve(settings: Settings) -> None:
    folder.prepare(settings, "web")  # before create_app imports prometheus_client (pipeline.metrics)
    _open_files_to_the_hard_limit()
    stop = lifecycle.stop_on_signals()
    # Handed down by `pacsflow dev`, else bound here, before anything is opened: a port another
    # server holds (no SO_REUSEPORT: no one shares it) ends the start at once.
    listener = listeners.listen(settings.env, listeners.http(settings))
    if settings.auth == "off":
        _log.warning(
            "auth_off", fix="anyone who reaches this port reads, stores and deletes: set PACSFLOW_AUTH=jwt"
        )
    runner = web.AppRunner(
        create_app(settings),
        access_log=logging.getLogger("pacsflow.access"),
        access_log_class=TimedAccessLogger,
        max_line_size=settings.http_max_url_bytes,
        max_field_size=settings.http_max_header_bytes,
        logger=_PROTOCOL_LOG,
    )
    await runner.setup()
    await web.SockSite(runner, listener).start()
    _log.info("web_listening", host=settings.http_host, port=settings.http_port)
    lifecycle.notify_ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        _log.info("web_stopped")
