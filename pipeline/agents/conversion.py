"""The conversion agent: ``conversion_queue`` -> converted copies, the index's conversion columns,
``conversion_log``.

The index agent asks for a conversion when an instance's pixel data is in a transfer syntax the
viewer cannot decode. Each request is converted once (``pipeline.conversion.convert``, in a
thread) and recorded on the instance's row, only while that row is still the requested store: a
replaced or deleted instance is skipped, and so is one already converted or failed for that store
(a redelivery). Every request ends in one ``ConversionRecord`` (converted, failed or skipped).

An instance that cannot be converted is recorded as failed with the reason and the stream goes on;
its original is never touched and stays served. What depends on the database's, the broker's or
the storage's state holds the stream and is retried (``HoldNote.until_done``), noted for
`pacsflow status` as the index does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import faust

from pipeline import conversion, log, topics
from pipeline.agents.channels import study_keyed
from pipeline.agents.database import Database
from pipeline.cache import Cache
from pipeline.conversion import ConversionFailed, Converted
from pipeline.errors import StorageError, StorageUnavailable
from pipeline.indexing import CONVERSION_DONE, CONVERSION_FAILED
from pipeline.models import ConversionRecord, ConversionRequest
from pipeline.models.formats import doris_datetime
from pipeline.settings import Settings
from pipeline.status import HoldNote
from pipeline.stores import conversions
from pipeline.stores.files import StorageLayout

_log = log.get(__name__)
T = TypeVar("T")
CONVERTED, FAILED, SKIPPED = "converted", "failed", "skipped"


@dataclass(frozen=True)
class _Outcome:
    status: str
    reason: str | None = None


class Converter:
    def __init__(self, settings: Settings, database: Database, app: faust.App) -> None:
        self._settings = settings
        self._database = database
        self._layout = StorageLayout(settings.storage_root)
        self._log_topic = study_keyed(app, topics.CONVERSION_LOG)
        self.hold = HoldNote(settings, "conversion")

    async def handle(self, raw: bytes) -> None:
        """Convert what ``raw`` asks for, record it, publish its record; return only once all of
        that is done (or the request is not one the index can have written)."""
        try:
            request = ConversionRequest.loads(raw)
        except (ValueError, TypeError, KeyError) as exc:
            # Only the index agent writes this topic; it names no instance to record anything for.
            _log.warning("foreign_conversion_request_skipped", error=str(exc))
            return
        context = {
            "tenant": request.tenant_id,
            "trace_id": request.trace_id,
            "sop_instance_uid": request.sop_uid,
        }
        started = time.perf_counter()
        outcome = await self._outcome(request)
        record = ConversionRecord(
            tenant_id=request.tenant_id,
            study_uid=request.study_uid,
            series_uid=request.series_uid,
            sop_uid=request.sop_uid,
            source_ts=request.source_ts,
            target_ts=request.target_ts,
            status=outcome.status,
            reason=outcome.reason,
            trace_id=request.trace_id,
            worker_node_id=self._settings.node_id,
            created_time=doris_datetime(datetime.now(UTC)),
        )
        await self.hold.until_done("broker", lambda: self._publish(record))
        event = {CONVERTED: "instance_converted", FAILED: "conversion_failed"}.get(
            outcome.status, "conversion_skipped"
        )
        logged = _log.warning if outcome.status == FAILED else _log.info
        logged(
            event,
            reason=outcome.reason,
            source_ts=request.source_ts,
            target_ts=request.target_ts,
            ms=round((time.perf_counter() - started) * 1000, 1),
            **context,
        )

    async def _outcome(self, request: ConversionRequest) -> _Outcome:
        skipped = await self.hold.until_done("database", lambda: self._why_skip(request))
        if skipped is not None:
            return _Outcome(SKIPPED, skipped)
        result = await self.hold.until_done("storage", lambda: asyncio.to_thread(self._convert, request))
        if isinstance(result, Converted):
            copy = result
            recorded = await self.hold.until_done(
                "database",
                lambda: self._database.run(
                    lambda conn: conversions.record_converted(conn, request, copy.syntax, copy.frame_index)
                ),
            )
            if recorded:
                return _Outcome(CONVERTED)
            # Replaced or deleted while it was converted: a copy nothing will serve nor remove.
            await asyncio.to_thread(_remove, copy.path)
            return _Outcome(SKIPPED, _REPLACED)
        error = result
        recorded = await self.hold.until_done(
            "database",
            lambda: self._database.run(lambda conn: conversions.record_failed(conn, request, error)),
        )
        return _Outcome(FAILED, result) if recorded else _Outcome(SKIPPED, _REPLACED)

    def _convert(self, request: ConversionRequest) -> Converted | str:
        """The copy, or why the instance cannot be converted; raises what holds the stream."""
        try:
            return conversion.convert(self._layout, request)
        except ConversionFailed as exc:
            return str(exc)
        except (StorageUnavailable, StorageError):
            raise  # the storage's state, not this instance's: wait for it
        except Exception as exc:  # nothing about one instance may stop the stream
            return f"{type(exc).__name__}: {exc}"

    async def _why_skip(self, request: ConversionRequest) -> str | None:
        row = await self._database.run(lambda conn: conversions.state(conn, request))
        if row is None:
            return "the instance is no longer in the index (deleted)"
        if row.trace_id != request.trace_id:
            return _REPLACED
        if row.conversion_status == CONVERSION_DONE:
            return "already converted"
        if row.conversion_status == CONVERSION_FAILED:
            return "already failed for this store"
        return None

    async def _publish(self, record: ConversionRecord) -> None:
        sent = await self._log_topic.send(key=topics.study_key(record.study_uid), value=record.dumps())
        await sent


_REPLACED = "the instance was stored again or deleted since (a newer store is converted on its own request)"


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # only space is lost; the index never points at it
        _log.warning("stale_converted_copy_kept", path=str(path), error=f"{type(exc).__name__}: {exc}")


def register(app: faust.App, settings: Settings, database: Database, cache: Cache) -> None:
    """Declare the conversion agent on ``app``.

    ``cache`` is not used: Redis holds QIDO-RS answers and metadata, which a converted copy does
    not change; frames and instances are never cached.
    """
    requests = study_keyed(app, topics.CONVERSION_QUEUE, settings.kafka_partitions)
    converter = Converter(settings, database, app)

    @app.agent(requests, name="convert_instance")
    async def convert_instance(stream: faust.StreamT[Any]) -> None:
        converter.hold.flowing()  # a note left by this node's last run, which may have died held
        async for raw in stream:
            await converter.handle(bytes(raw))
