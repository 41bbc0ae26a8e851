"""The change feed, as Microsoft's DICOM service has it: ``GET <prefix>/changefeed`` and
``GET <prefix>/changefeed/latest``, under every DICOMweb prefix (the tenant is the prefix's).

Entries come from ``dicom_change_feed`` (``pipeline.stores.changefeed``). ``wait=N`` holds a
request that finds nothing after ``offset`` until the index commits an entry of its tenant or N
seconds pass: each web process has one connection that LISTENs to the index's notifications
(``listening``), and a notification wakes that tenant's waiting requests, which read the table
again. No request holds a database connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from aiohttp import web
from multidict import MultiMapping

from egress.wado.errors import BadRequest
from egress.wado.keys import POOL, SETTINGS
from egress.wado.numbers import whole
from egress.wado.urls import root_for, tenant_of
from pipeline import log
from pipeline.metadata import BULK_URI_KEY
from pipeline.models import TenantId
from pipeline.models.formats import iso_utc
from pipeline.retries import until_it_works
from pipeline.stores import changefeed
from pipeline.stores.changefeed import Entry

_log = log.get(__name__)
DEFAULT_LIMIT, MAX_LIMIT = 10, 200
MAX_WAIT_S = 60
_FEED_PARAMETERS = ("offset", "limit", "includemetadata", "startTime", "endTime", "wait")
_LATEST_PARAMETERS = ("includemetadata",)
# While the listening connection is down a notification can be missed: waiting requests look
# again this often until it is back.
_UNHEARD_RECHECK_S = 1.0


class Notices:
    """The tenants' notifications, for the requests that wait for them."""

    def __init__(self) -> None:
        self._waking: dict[str, asyncio.Event] = {}
        self._watching: Counter[str] = Counter()
        self.listening = False
        self.closed = False

    @contextlib.contextmanager
    def watching(self, tenant: str) -> Iterator[None]:
        """While a request may wait for the tenant's notices: a tenant no request waits for keeps
        nothing here (any name under /tenants/ reaches this)."""
        self._watching[tenant] += 1
        try:
            yield
        finally:
            self._watching[tenant] -= 1
            if not self._watching[tenant]:
                del self._watching[tenant]
                self._waking.pop(tenant, None)

    def next(self, tenant: str) -> asyncio.Event:
        """Set at the tenant's next notification: take it before reading the table, so that an
        entry committed after the read still wakes the reader."""
        return self._waking.setdefault(tenant, asyncio.Event())

    def notify(self, tenant: str) -> None:
        waking = self._waking.pop(tenant, None)
        if waking is not None:
            waking.set()

    def wake_all(self) -> None:
        waking, self._waking = self._waking, {}
        for event in waking.values():
            event.set()


NOTICES = web.AppKey("changefeed_notices", Notices)


@dataclass(frozen=True)
class FeedQuery:
    after: int
    limit: int
    metadata: bool
    start: datetime | None
    end: datetime | None
    wait: float


def _values(query: MultiMapping[str], known: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters by their names in ``known``, matched without regard to case (as
    Microsoft's service does): each known, each given once."""
    names = {name.lower(): name for name in known}
    values: dict[str, str] = {}
    for name, value in query.items():
        key = names.get(name.lower())
        if key is None:
            raise BadRequest(f"unknown parameter {name!r}; the change feed takes {', '.join(known)}")
        if key in values:
            raise BadRequest(f"{name} is given more than once")
        values[key] = value
    return values


def _number(values: dict[str, str], name: str, default: int, lowest: int, highest: int) -> int:
    raw = values.get(name)
    if raw is None:
        return default
    value = whole(raw)
    if value is None:
        raise BadRequest(f"{name}={raw!r} is not a whole number")
    if not lowest <= value <= highest:
        raise BadRequest(f"{name}={value}: it must be from {lowest} to {highest}")
    return value


def _flag(values: dict[str, str], name: str) -> bool:
    raw = values.get(name, "true").lower()
    if raw not in ("true", "false"):
        raise BadRequest(f"{name}={raw!r}: it is true or false")
    return raw == "true"


def _moment(values: dict[str, str], name: str) -> datetime | None:
    raw = values.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        hint = " (a '+' in a URL reads as a space: write it %2B)" if " " in raw else ""
        raise BadRequest(
            f"{name}={raw!r} is not an ISO 8601 date and time (e.g. 2024-05-01T12:00:00Z){hint}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def feed_query(query: MultiMapping[str]) -> FeedQuery:
    """``GET .../changefeed``'s parameters, read strictly: a bad value is a 400 that names it."""
    values = _values(query, _FEED_PARAMETERS)
    start, end = _moment(values, "startTime"), _moment(values, "endTime")
    if start is not None and end is not None and start >= end:
        raise BadRequest(f"startTime {start.isoformat()} is not before endTime {end.isoformat()}")
    return FeedQuery(
        after=_number(values, "offset", 0, 0, 2**63 - 1),
        limit=_number(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        metadata=_flag(values, "includemetadata"),
        start=start,
        end=end,
        wait=_number(values, "wait", 0, 0, MAX_WAIT_S),
    )


def _json(entry: Entry, root: bytes) -> dict[str, object]:
    out: dict[str, object] = {
        "Sequence": entry.sequence,
        "StudyInstanceUid": entry.study_uid,
        "SeriesInstanceUid": entry.series_uid,
        "SopInstanceUid": entry.sop_uid,
        "Action": entry.action,
        "Timestamp": iso_utc(entry.timestamp),
        "State": entry.state,
    }
    if entry.metadata is not None:
        # The fragment as stored, its BulkDataURIs made absolute (pipeline.metadata).
        out["Metadata"] = orjson.Fragment(entry.metadata.replace(BULK_URI_KEY, root))
    return out


def _answer(body: object) -> web.Response:
    response = web.Response(body=orjson.dumps(body), content_type="application/json")
    response.headers["Cache-Control"] = "no-store"  # a feed: the next read may differ
    return response


def _bulk_root(request: web.Request, tenant: TenantId) -> bytes:
    return BULK_URI_KEY + root_for(request, request.app[SETTINGS], tenant).encode() + b"/"


async def feed(request: web.Request) -> web.Response:
    tenant = tenant_of(request, request.app[SETTINGS])
    asked = feed_query(request.query)
    notices = request.app[NOTICES]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + asked.wait
    with notices.watching(tenant):
        while True:
            woken = notices.next(tenant)
            found = await changefeed.entries(
                request.app[POOL],
                tenant,
                after=asked.after,
                limit=asked.limit,
                start=asked.start,
                end=asked.end,
                metadata=asked.metadata,
            )
            remaining = deadline - loop.time()
            if found or remaining <= 0 or notices.closed:
                break
            timeout = remaining if notices.listening else min(remaining, _UNHEARD_RECHECK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout)
    root = _bulk_root(request, tenant)
    return _answer([_json(entry, root) for entry in found])


async def latest(request: web.Request) -> web.Response:
    """The newest entry; 204 with no body when the tenant has none (what Microsoft's service
    answers: its null entry becomes ASP.NET's 204 No Content)."""
    tenant = tenant_of(request, request.app[SETTINGS])
    metadata = _flag(_values(request.query, _LATEST_PARAMETERS), "includemetadata")
    entry = await changefeed.latest(request.app[POOL], tenant, metadata=metadata)
    if entry is None:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    return _answer(_json(entry, _bulk_root(request, tenant)))


async def listening(app: web.Application) -> AsyncIterator[None]:
    """The process's one LISTEN connection, opened here and closed here."""
    task = asyncio.create_task(_listen(app[SETTINGS].database_url, app[NOTICES]), name="changefeed-listener")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _listen(dsn: str, notices: Notices) -> None:
    """Listen, and again whenever the connection is lost; the web server serves meanwhile."""
    while True:
        conn: asyncpg.Connection | None = None
        lost = asyncio.Event()
        try:
            async for attempt in until_it_works("changefeed_listener_unavailable"):
                with attempt:
                    conn = await _connect(dsn, notices, lost)
            notices.listening = True
            notices.wake_all()  # whatever was committed while no one listened
            _log.info("changefeed_listening")
            await lost.wait()
            _log.warning("changefeed_listener_lost")
        finally:
            notices.listening = False
            if conn is not None and not conn.is_closed():
                conn.terminate()  # no round trip: also right when cancelled at shutdown


async def _connect(dsn: str, notices: Notices, lost: asyncio.Event) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(changefeed.CHANNEL, lambda _c, _pid, _channel, tenant: notices.notify(tenant))
    except BaseException:
        conn.terminate()
        raise
    return conn


async def _wake_waiting(app: web.Application) -> None:
    """At shutdown, waiting requests answer now with what they have rather than hold the stop."""
    app[NOTICES].closed = True
    app[NOTICES].wake_all()


def add_routes(app: web.Application, prefixes: tuple[str, ...]) -> None:
    """The routes, the listening connection (a cleanup context) and the wake-up at shutdown."""
    app[NOTICES] = Notices()
    app.cleanup_ctx.append(listening)
    app.on_shutdown.append(_wake_waiting)
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/changefeed", feed)
        app.router.add_get(f"{prefix}/changefeed/latest", latest)
