"""STOW-RS (PS3.18 10.5): ``POST .../studies`` and ``POST .../studies/{study}``.

The body (``multipart/related; type="application/dicom"``) is read part by part with aiohttp's
multipart reader and each part streamed to a temporary file on the storage root's filesystem, so
that storing it is a rename: no request and no part is ever held in memory, and aiohttp's
``client_max_size`` (which only ``read()`` and ``post()`` apply) does not limit it. Our own limits,
``PACSFLOW_STOW_MAX_PART_BYTES`` and ``PACSFLOW_STOW_MAX_REQUEST_BYTES``, are checked against the
declared lengths first and counted while streaming.

Each part then goes through the C-STORE's ``InstanceReceiver`` (same checks, same durability:
file fsynced and renamed, folder fsynced, events in the outbox) before it is reported stored.
Parts are stored while the next ones arrive. The answer lists what was stored
(ReferencedSOPSequence) and what was not, with its FailureReason (FailedSOPSequence); each
refusal's reason in words is also in a ``Warning`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError
from pydicom import dcmread
from structlog.contextvars import bound_contextvars

from egress.wado import accept as accept_header
from egress.wado.access_log import TRACE_ID
from egress.wado.errors import BadRequest, problem
from egress.wado.keys import OUTBOX, PUBLISHER, SETTINGS
from egress.wado.urls import root_for, tenant_of, uid
from pipeline import log
from pipeline.errors import PacsflowError
from pipeline.ingest import InstanceReceiver, Source, StoredInstance, StoreStatus, status_for
from pipeline.metrics.guard import Recording
from pipeline.models import Uid
from pipeline.stores.files import TEMP_SUFFIX, StorageLayout

if TYPE_CHECKING:  # imported by create_app once the metrics folder is set (pipeline.metrics)
    from pipeline.metrics.instruments import Stores

_log = log.get(__name__)
_COUNTING = Recording("stow_store")
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

DICOM_JSON = "application/dicom+json"
PART_TYPE = "application/dicom"
"""What each part of a request is (a DICOM Part 10 file), in ``multipart/related``."""
AE_TITLE = "STOW-RS"
"""The ``SourceAE`` of instances stored over STOW-RS (events, Doris rows)."""
INCOMING = ".stow"
"""Folder of the storage root where parts are streamed before they are stored (a name no tenant
can have, so nothing takes it for one's data)."""
_CHUNK = 256 * 1024
_FLUSH = 1024 * 1024  # bytes gathered before one write: few thread hops, little memory
_IN_FLIGHT = 4  # parts being stored (fsyncs) while the next one arrives
_ACCEPTED = ("application/dicom+json", "application/json", "application/*", "*/*")


class TooLarge(PacsflowError):
    """The request or one of its parts is beyond the STOW-RS limits (413)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one part."""

    number: int
    sop_class: str | None = None
    sop_instance: str | None = None
    stored: StoredInstance | None = None
    status: StoreStatus = StoreStatus.SUCCESS
    reason: str = ""


COUNTS: web.AppKey[Stores] = web.AppKey("stow_counts")
"""Where each part's outcome is counted (``pacsflow_instances_stored_total``); unset: nowhere."""


@dataclass
class _Budget:
    part_max: int
    request_max: int
    request: web.Request

    def count(self, part_bytes: int) -> None:
        if part_bytes > self.part_max:
            raise TooLarge(
                f"a part is larger than PACSFLOW_STOW_MAX_PART_BYTES ({self.part_max} bytes); "
                "raise the setting or send the instance on its own"
            )
        # Bytes the connection delivered, boundaries and headers included: the request's size.
        if self.request.content.total_bytes > self.request_max:
            raise TooLarge(_request_too_large(self.request_max))


def _request_too_large(limit: int) -> str:
    return (
        f"the request is larger than PACSFLOW_STOW_MAX_REQUEST_BYTES ({limit} bytes); "
        "send the instances in several requests or raise the setting"
    )


def _check_media_types(request: web.Request) -> None:
    mimetype = parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, ""))
    kind = mimetype.parameters.get("type", PART_TYPE).lower()
    if (mimetype.type, mimetype.subtype) != ("multipart", "related") or kind != PART_TYPE:
        given = request.headers.get(hdrs.CONTENT_TYPE) or "none"
        raise web.HTTPUnsupportedMediaType(
            text=f"Content-Type {given} is not supported: STOW-RS here takes multipart/related; "
            'type="application/dicom" (DICOM Part 10 files, one per part)'
        )
    accept = request.headers.get(hdrs.ACCEPT)
    if not any(r.media_type in _ACCEPTED for r in accept_header.parse(accept)):
        raise web.HTTPNotAcceptable(text=f"the answer is {DICOM_JSON}; Accept {accept!r} excludes it")


async def store(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tenant = tenant_of(request, settings)
    expected = uid(request, "study", "StudyInstanceUID") if "study" in request.match_info else None
    _check_media_types(request)
    if request.content_length is not None and request.content_length > settings.stow_max_request_bytes:
        return _too_large(_request_too_large(settings.stow_max_request_bytes))
    source = Source(
        tenant=tenant, ae_title=AE_TITLE, address=request.remote or "", trace_id=request[TRACE_ID]
    )
    receiver = InstanceReceiver(StorageLayout(settings.storage_root), request.app[OUTBOX], settings.node_id)
    incoming = settings.storage_root / INCOMING
    await asyncio.to_thread(incoming.mkdir, parents=True, exist_ok=True)
    budget = _Budget(settings.stow_max_part_bytes, settings.stow_max_request_bytes, request)
    storing = _Stores(request, receiver, source, expected)
    with bound_contextvars(tenant=tenant, trace_id=source.trace_id):
        try:
            await _read_parts(request, incoming, budget, storing)
        except TooLarge as exc:
            return _too_large(f"{exc}{_kept(await storing.finish())}")
        except (ValueError, HttpProcessingError) as exc:  # the multipart reader's word for a bad body
            kept = _kept(await storing.finish())
            return problem(400, f"the body is not a readable multipart/related message: {exc}{kept}")
        except BaseException:  # the client went away: what was received is still stored
            await storing.finish()
            raise
        outcomes = await storing.finish()
    if not outcomes:
        raise BadRequest("the request holds no parts: send one DICOM Part 10 file per part")
    return _answer(outcomes, root_for(request, settings, tenant), expected)


def _too_large(message: str) -> web.Response:
    response = problem(413, message)
    response.force_close()  # the rest of the body is not read: the connection cannot be reused
    return response


def _kept(outcomes: Sequence[Outcome]) -> str:
    stored = sum(1 for o in outcomes if o.stored is not None)
    return f" ({stored} instances before it were stored)" if stored else " (nothing was stored)"


async def _read_parts(request: web.Request, incoming: Path, budget: _Budget, storing: _Stores) -> None:
    reader = await request.multipart()
    number = 0
    while (part := await reader.next()) is not None:
        number += 1
        if isinstance(part, MultipartReader):
            await part.release()
            storing.refused(number, "a part is itself multipart; send one DICOM file per part")
            continue
        media = parse_mimetype(part.headers.get(hdrs.CONTENT_TYPE, "application/dicom"))
        if (media.type, media.subtype, media.suffix) != ("application", "dicom", ""):
            await _discard(part, budget)
            given = part.headers.get(hdrs.CONTENT_TYPE)
            storing.refused(number, f"part {number} is {given}, not application/dicom")
            continue
        declared = part.headers.get(hdrs.CONTENT_LENGTH)
        if declared is not None and declared.isdigit():
            budget.count(int(declared))
        temp = incoming / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            await _spool(part, temp, budget)
        except BaseException:
            await asyncio.to_thread(_remove, temp)
            raise
        await storing.add(number, temp)


async def _discard(part: BodyPartReader, budget: _Budget) -> None:
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        budget.count(size)


async def _spool(part: BodyPartReader, temp: Path, budget: _Budget) -> None:
    """Stream one part to ``temp``: its bytes pass through memory a chunk at a time."""
    fd = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        size = 0
        gathered: list[bytes] = []
        waiting = 0
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            budget.count(size)
            gathered.append(chunk)
            waiting += len(chunk)
            if waiting >= _FLUSH:
                await asyncio.to_thread(_write, fd, gathered)
                gathered, waiting = [], 0
        if gathered:
            await asyncio.to_thread(_write, fd, gathered)
    finally:
        await asyncio.to_thread(os.close, fd)


def _write(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


class _Stores:
    """The parts being stored, in the order they came; at most ``_IN_FLIGHT`` at once."""

    def __init__(
        self, request: web.Request, receiver: InstanceReceiver, source: Source, expected: Uid | None
    ) -> None:
        self._request = request
        self._receiver = receiver
        self._source = source
        self._expected = expected
        self._slots = asyncio.Semaphore(_IN_FLIGHT)
        self._pending: list[asyncio.Task[Outcome] | Outcome] = []

    def refused(self, number: int, reason: str) -> None:
        _log.warning("instance_rejected", part=number, status="0xC000", reason=reason, source_ae=AE_TITLE)
        self._pending.append(Outcome(number, status=StoreStatus.CANNOT_UNDERSTAND, reason=reason))

    async def add(self, number: int, temp: Path) -> None:
        await self._slots.acquire()
        self._pending.append(asyncio.create_task(self._store(number, temp)))

    async def finish(self) -> list[Outcome]:
        """Every part's outcome, once stored or not; each counted (once: called once a request)."""
        outcomes = [item if isinstance(item, Outcome) else await item for item in self._pending]
        counts = self._request.app.get(COUNTS)
        if counts is not None:
            with _COUNTING:  # the instances are stored: a metric's file failing must not say otherwise
                for outcome in outcomes:
                    size = outcome.stored.file_size if outcome.stored is not None else 0
                    counts.count(self._source.tenant, outcome.status, size)
        return outcomes

    async def _store(self, number: int, temp: Path) -> Outcome:
        try:
            stored = await asyncio.to_thread(self._receiver.receive_file, temp, self._source, self._expected)
        except Exception as exc:
            status = status_for(exc) if isinstance(exc, PacsflowError) else StoreStatus.PROCESSING_FAILURE
            sop_class, sop_instance = await asyncio.to_thread(_identify, temp)
            if isinstance(exc, PacsflowError):
                _log.warning(
                    "instance_rejected",
                    part=number,
                    status=f"0x{status:04X}",
                    reason=str(exc),
                    sop_instance_uid=sop_instance,
                    source_ae=AE_TITLE,
                    address=self._source.address,
                )
            else:  # never report success on a failure we did not foresee
                _log.exception("instance_failed", part=number, sop_instance_uid=sop_instance)
            return Outcome(number, sop_class, sop_instance, status=status, reason=f"part {number}: {exc}")
        finally:
            self._slots.release()
            await asyncio.to_thread(_remove, temp)
        self._request.app[PUBLISHER].notify()
        loc = stored.location
        return Outcome(number, stored.header.sop_class_uid, loc.sop, stored)


def _identify(path: Path) -> tuple[str | None, str | None]:
    """The SOP class and instance of a refused part, when it has them: the answer names them."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception:  # a part that is not DICOM at all has none to name
        return None, None
    return (str(ds.get("SOPClassUID", "")) or None), (str(ds.get("SOPInstanceUID", "")) or None)


def _answer(outcomes: Sequence[Outcome], root: str, expected: Uid | None) -> web.Response:
    """PS3.18 10.5.3: the Store Instances Response, as DICOM JSON."""
    stored = [o.stored for o in outcomes if o.stored is not None]
    failed = [o for o in outcomes if o.stored is None]
    answer: dict[str, Any] = {}
    studies = {s.location.study for s in stored} or ({expected} if expected else set())
    if len(studies) == 1:
        answer["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{next(iter(studies))}"]}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": [_referenced(s, root) for s in stored]}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": [_failed(o) for o in failed]}
    status = 200 if not failed else 202 if stored else 409
    response = web.Response(status=status, body=orjson.dumps(answer), content_type=DICOM_JSON)
    for outcome in failed:
        response.headers.add(hdrs.WARNING, f'299 pacsflow "{_quoted(outcome.reason)}"')
    return response


def _referenced(stored: StoredInstance, root: str) -> dict[str, Any]:
    loc = stored.location
    return {
        "00081150": {"vr": "UI", "Value": [stored.header.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [loc.sop]},
        "00081190": {
            "vr": "UR",
            "Value": [f"{root}/studies/{loc.study}/series/{loc.series}/instances/{loc.sop}"],
        },
    }


def _failed(outcome: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class]}
    if outcome.sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance]}
    item["00081197"] = {"vr": "US", "Value": [int(outcome.status)]}
    return item


def _quoted(text: str) -> str:
    """A header's quoted-string: printable ASCII, quotes and backslashes escaped, one line."""
    plain = "".join(c if " " <= c <= "~" else "?" for c in text)[:500]
    return plain.replace("\\", "\\\\").replace('"', '\\"')


LEFTOVER_AFTER_S = 6 * 3600
"""A part streamed this long ago is a leftover of a process that died mid-request: no request of
``PACSFLOW_STOW_MAX_REQUEST_BYTES`` takes that long, and several web processes share the folder."""


def _sweep(incoming: Path, now: float) -> list[str]:
    removed = []
    for temp in incoming.glob(f"*{TEMP_SUFFIX}"):
        try:
            if now - temp.stat().st_mtime > LEFTOVER_AFTER_S:
                temp.unlink()
                removed.append(temp.name)
        except FileNotFoundError:
            continue  # another web process swept it first
    return removed


async def _sweep_leftovers(app: web.Application) -> None:
    incoming = app[SETTINGS].storage_root / INCOMING
    if not incoming.is_dir():
        return
    try:
        removed = await asyncio.to_thread(_sweep, incoming, time.time())
    except OSError as exc:  # the storage's trouble: STOW-RS answers for it, the start goes on
        _log.warning("stow_sweep_failed", folder=str(incoming), error=str(exc))
        return
    if removed:
        _log.info("stow_leftovers_removed", folder=str(incoming), files=len(removed))


def add_routes(
    app: web.Application, prefixes: tuple[str, ...], expect_handler: ExpectHandler | None = None
) -> None:
    """``expect_handler``: who answers ``Expect: 100-continue`` (the guard, with auth on)."""
    app.on_startup.append(_sweep_leftovers)
    for prefix in prefixes:
        app.router.add_post(f"{prefix}/studies", store, expect_handler=expect_handler)
        app.router.add_post(f"{prefix}/studies/{{study}}", store, expect_handler=expect_handler)
