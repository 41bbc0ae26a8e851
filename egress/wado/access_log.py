"""One ``WadoAccessLog`` record per request, to topic ``wado_access_log`` (Doris ``wado_access_log``),
and one canonical log line per request.

aiohttp calls the access logger once a response has been sent in full, with its status and size.
Records wait in a bounded queue for a producer of their own: a request never waits for the
broker. These are analytics, not images: when the broker is away for longer than the queue lasts
(``QUEUE_SIZE`` requests), the oldest records are dropped and counted, never the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiokafka import AIOKafkaProducer

from egress.auth.guard import IDENTITY
from egress.wado.keys import SETTINGS
from egress.wado.urls import is_dicomweb
from pipeline import log, topics
from pipeline.models import WadoAccessLog
from pipeline.models.formats import doris_datetime
from pipeline.settings import Settings

_log = log.get(__name__)
QUEUE_SIZE = 10_000
_BATCH = 500
_WARN_EVERY_S = 30.0
TRACE_ID = web.RequestKey("trace_id", str)
STARTED = web.RequestKey("started", float)
TRACE_HEADER = "X-Request-ID"


class AccessLogPublisher:
    """Takes records from requests and sends them to the broker in the background."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._queue: asyncio.Queue[WadoAccessLog] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.sent = 0
        self._warned_at = -_WARN_EVERY_S

    def add(self, record: WadoAccessLog) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(record)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-log-publisher")

    async def stop(self, drain_s: float = 2.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), drain_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.dropped or not self._queue.empty():
            _log.warning("access_log_dropped", dropped=self.dropped + self._queue.qsize(), sent=self.sent)

    async def _drained(self) -> None:
        while not self._queue.empty():  # noqa: ASYNC110  # a queue has no "emptied" event to wait on
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        delay = 1.0
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.kafka_bootstrap,
                client_id=f"pacsflow-web-{self._settings.node_id}",
                acks=1,
                linger_ms=50,
                request_timeout_ms=int(self._settings.kafka_request_timeout_s * 1000),
            )
            try:
                await producer.start()
                delay = 1.0
                while True:
                    batch = [await self._queue.get()]
                    while len(batch) < _BATCH and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    sent = [
                        await producer.send(topics.WADO_ACCESS_LOG, r.dumps(), key=r.tenant_id.encode())
                        for r in batch
                    ]
                    await asyncio.gather(*sent)
                    self.sent += len(batch)
            except topics.BROKER_FAILURES as exc:
                self._warn(exc)
            finally:
                with contextlib.suppress(*topics.BROKER_FAILURES):
                    await producer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            _log.warning(
                "access_log_unpublished",
                error=f"{type(exc).__name__}: {exc}",
                waiting=self._queue.qsize(),
                dropped=self.dropped,
            )


ACCESS_LOG = web.AppKey("access_log", AccessLogPublisher)


def client_address(request: web.BaseRequest) -> str | None:
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return forwarded or request.remote


def trace_id(request: web.Request) -> str:
    """The caller's ``X-Request-ID`` when it is a sane one, else a new one; echoed in the answer."""
    given = request.headers.get(TRACE_HEADER, "")
    if 0 < len(given) <= 36 and given.isascii() and given.replace("-", "").isalnum():
        return given
    return str(uuid.uuid4())


@web.middleware
async def tracing(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[TRACE_ID] = trace_id(request)
    request[STARTED] = time.perf_counter()
    return await handler(request)


async def echo_trace_id(request: web.Request, response: web.StreamResponse) -> None:
    if TRACE_ID in request:
        response.headers[TRACE_HEADER] = request[TRACE_ID]


def _served_in(request: web.Request, duration: float) -> float:
    """Seconds from the request reaching pacsflow's middleware to its answer sent. aiohttp's own
    ``duration`` comes from the loop's clock, which uvloop keeps in whole milliseconds: a 0.9 ms
    answer would be logged as 1 ms, longer than its client saw it take."""
    started = request.get(STARTED)
    return time.perf_counter() - started if started is not None else duration


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access logger: the canonical line and the record, once the answer is sent."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, duration: float) -> None:
        if not isinstance(request, web.Request):
            return  # not routed (a malformed request line): nothing to attribute it to
        app = request.app
        settings = app[SETTINGS]
        info = request.match_info
        route = info.route.resource.canonical if info.route.resource is not None else request.path
        tenant = info.get("tenant", settings.default_tenant)
        identity = request.get(IDENTITY)
        record = WadoAccessLog(
            tenant_id=tenant,
            route=route[:128],
            study_uid=info.get("study"),
            series_uid=info.get("series"),
            sop_uid=info.get("instance"),
            status=response.status,
            bytes=response.body_length,
            duration_ms=round(_served_in(request, duration) * 1000, 3),
            client_address=client_address(request),
            trace_id=request.get(TRACE_ID, ""),
            created_time=doris_datetime(datetime.now(UTC)),
            worker_node_id=settings.node_id,
            subject=identity.subject if identity else None,
            client_id=identity.client_id if identity else None,
        )
        # The topic is DICOMweb's (unknown DICOMweb paths included): health checks and the
        # viewer's own files are not analytics.
        if is_dicomweb(request.path):
            app[ACCESS_LOG].add(record)
        if not logging.getLogger(__name__).isEnabledFor(logging.INFO):
            return  # structlog would run its processors before the level drops the line
        _log.info(
            "request",
            method=request.method,
            path=request.path,
            route=route,
            status=response.status,
            bytes=response.body_length,
            ms=record.duration_ms,
            tenant=tenant,
            client=record.client_address,
            trace_id=record.trace_id,
            subject=record.subject,
            client_id=record.client_id,
        )
