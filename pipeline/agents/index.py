"""The index agent: ``storage_queue`` -> PostgreSQL index, ``dicom_state_queue``, ``dicom_image_queue``,
``conversion_queue``.

``storage_queue`` carries stores and deletions of a study in one partition, in the order they were
published: a batch is applied run by run, each deletion after the stores before it.

No event is ever skipped. Events are acked by hand, only after their batch is written and its
records are on the broker. An event that can never be indexed (file missing or not DICOM,
identifiers that do not hold, values the database refuses: ``database.is_data_error``) goes to
``storage_dlq`` with its reason and the stream flows on. Any other failure (database or broker
away, tables not migrated, a read-only database, a full disk) holds the stream and is retried with
backoff, its reason logged and noted for `pacsflow status`. Faust's ``take()`` would ack a batch
even when its processing was interrupted, hence our own batching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import faust
from pydicom import dcmread

from pipeline import frames, log, metadata, regeneration, topics
from pipeline.agents.channels import study_keyed
from pipeline.agents.database import Database, is_data_error
from pipeline.cache import Cache
from pipeline.errors import PacsflowError, StorageUnavailable
from pipeline.indexing import (
    CONVERSION_PENDING,
    IndexedInstance,
    UnindexableInstance,
    deleted_image_record,
    index_instance,
    state_record,
)
from pipeline.models import (
    ConversionRequest,
    DeletionEvent,
    StorageDeadLetter,
    StorageEvent,
    TenantId,
    Uid,
    storage_queue_record,
)
from pipeline.models.formats import iso_utc
from pipeline.retries import describe
from pipeline.settings import Settings
from pipeline.status import HoldNote
from pipeline.stores import postgres
from pipeline.stores.files import InstanceLocation, StorageLayout, converted_copy, remove_instance_files

_log = log.get(__name__)
E = TypeVar("E")
BATCH_SIZE = 200
BATCH_WITHIN_S = 0.1


@dataclass(frozen=True)
class Dead:
    event: StorageEvent | None
    raw: bytes
    reason: str


async def batches(events: AsyncIterator[E], size: int, within: float) -> AsyncIterator[list[E]]:
    """Group ``events`` into lists of at most ``size``, waiting at most ``within`` s to fill one.

    Ends when ``events`` ends (the worker stops), after yielding what was collected.
    """
    loop = asyncio.get_running_loop()
    iterator = events.__aiter__()
    waiting: asyncio.Future[E] | None = None
    while True:
        if waiting is None:
            waiting = asyncio.ensure_future(anext(iterator))
        try:
            batch = [await waiting]
        except StopAsyncIteration:
            return
        waiting = None
        deadline = loop.time() + within
        while len(batch) < size:
            waiting = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                break  # keep waiting for it at the start of the next batch
            if isinstance(waiting.exception(), StopAsyncIteration):
                yield batch
                return
            batch.append(waiting.result())
            waiting = None
        yield batch


class Indexer:
    def __init__(self, settings: Settings, database: Database, cache: Cache, app: faust.App) -> None:
        self._settings = settings
        self._database = database
        self._cache = cache
        self._app = app
        self._layout = StorageLayout(settings.storage_root)
        self._state = study_keyed(app, topics.DICOM_STATE_QUEUE)
        self._image = study_keyed(app, topics.DICOM_IMAGE_QUEUE)
        self._dlq = study_keyed(app, topics.STORAGE_DLQ)
        self._conversions = study_keyed(app, topics.CONVERSION_QUEUE)
        self.hold = HoldNote(settings)

    async def index_batch(self, events: Sequence[faust.EventT[bytes]]) -> None:
        """Index one batch; return only when every event is indexed, applied or dead-lettered."""
        started = time.perf_counter()
        stores: list[tuple[StorageEvent, bytes]] = []
        dead: list[Dead] = []
        indexed = dead_lettered = 0
        for event in events:
            raw = bytes(event.value)
            try:
                record = storage_queue_record(raw)
            except (ValueError, TypeError, KeyError) as exc:
                dead.append(Dead(None, raw, f"neither a StorageEvent nor a DeletionEvent: {exc}"))
                continue
            if isinstance(record, DeletionEvent):
                done = await self._index_stores(stores, dead)  # the stores published before it first
                indexed, dead_lettered = indexed + done[0], dead_lettered + done[1]
                stores, dead = [], []
                dead_lettered += await self._delete(record, raw)
            else:
                stores.append((record, raw))
        done = await self._index_stores(stores, dead)
        self._log_batch(events, indexed + done[0], dead_lettered + done[1], started)

    async def _index_stores(
        self, parsed: list[tuple[StorageEvent, bytes]], dead: list[Dead]
    ) -> tuple[int, int]:
        if not parsed and not dead:
            return 0, 0
        indexed, unreadable = await self._retry("storage", lambda: asyncio.to_thread(self._read_all, parsed))
        dead = dead + unreadable
        counts, rejected = await self._retry("database", lambda: self._write(indexed))
        dead += rejected
        written = [i for i in indexed if not any(d.event is i.event for d in rejected)]
        await asyncio.to_thread(self._drop_stale_copies, written)
        await self._retry("broker", lambda: self._publish(written, counts, dead))
        # Cached QIDO-RS answers of these tenants are now stale.
        await self._cache.bump(item.instance.instance.tenant_id for item in written)
        return len(written), len(dead)

    async def _delete(self, event: DeletionEvent, raw: bytes) -> int:
        """Apply one deletion: files first, then rows, then the records that tell Doris; returns
        the number of events dead-lettered (1 for a deletion that can never be applied)."""
        started = time.perf_counter()
        try:
            tenant = TenantId(event.TenantID)
            study = Uid(event.StudyInstanceUID, "StudyInstanceUID")
            series = Uid(event.SeriesInstanceUID, "SeriesInstanceUID") if event.SeriesInstanceUID else None
            sop = Uid(event.SopInstanceUID, "SOPInstanceUID") if event.SopInstanceUID else None
            cutoff = datetime.fromisoformat(event.Cutoff)
        except (PacsflowError, ValueError) as exc:
            letter = Dead(None, raw, f"deletion: {exc}")
            await self._retry("broker", lambda: self._publish([], [], [letter]))
            return 1
        gone = await self._retry(
            "database",
            lambda: self._database.run(lambda c: postgres.doomed(c, tenant, study, series, sop, cutoff)),
        )
        await self._retry("storage", lambda: asyncio.to_thread(self._remove_files, gone))

        async def rows(conn: asyncpg.Connection) -> postgres.Deleted:
            async with regeneration.study_lock(conn, tenant, study):
                deleted = await postgres.delete_rows(conn, tenant, study, gone, cutoff)
                alive = await conn.fetch(
                    "SELECT series_uid FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2",
                    tenant,
                    study,
                )
                await asyncio.to_thread(
                    regeneration.forget, self._layout, tenant, study, [r["series_uid"] for r in alive]
                )
                return deleted

        deleted: postgres.Deleted = await self._retry("database", lambda: self._database.run(rows))
        touched = sorted({g.series_uid for g in gone})
        await self._cache.invalidate_metadata(tenant, study, touched)
        await self._retry("broker", lambda: self._publish_deletion(tenant, study, gone, deleted))
        _log.info(
            "instances_deleted",
            tenant=tenant,
            study_uid=study,
            series_uid=series,
            sop_instance_uid=sop,
            instances=len(gone),
            series_removed=[s.series_uid for s in deleted.removed],
            study_removed=deleted.study_gone,
            trace_id=event.TraceID,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return 0

    def _drop_stale_copies(self, written: Sequence[_Indexed]) -> None:
        """A converted copy of an instance now stored in a syntax the viewer decodes is never served
        again (its row says none is needed): remove it rather than leave it for good."""
        for item in written:
            row = item.instance.instance
            if row.conversion_status is None:
                copy = converted_copy(self._layout.root / row.file_path)
                try:
                    copy.unlink(missing_ok=True)
                except OSError as exc:  # only space is lost: nothing points at it
                    _log.warning("stale_converted_copy_kept", path=str(copy), error=str(exc))

    def _remove_files(self, gone: Sequence[postgres.DoomedInstance]) -> None:
        paths = [self._layout.root / item.file_path for item in gone]
        remove_instance_files(self._layout.root, [p for path in paths for p in (path, converted_copy(path))])

    async def _publish_deletion(
        self, tenant: str, study: str, gone: Sequence[postgres.DoomedInstance], deleted: postgres.Deleted
    ) -> None:
        now = datetime.now(UTC)
        futures: list[Awaitable[Any]] = []
        key = topics.study_key(study)
        for item in gone:
            record = deleted_image_record(
                tenant=tenant,
                patient_id=item.patient_id,
                study=study,
                series=item.series_uid,
                sop=item.sop_uid,
                study_date_origin=item.study_date_origin,
                sop_class_uid=item.sop_class_uid,
                transfer_syntax_uid=item.transfer_syntax_uid,
                file_path=item.file_path,
                file_size=item.file_size,
                when=now,
            )
            futures.append(await self._image.send(key=key, value=record.dumps()))
        states = [state_record(c.series, c.instances, c.created) for c in deleted.remaining]
        states += [state_record(series, 0, now, deleted=True) for series in deleted.removed]
        for state in states:
            futures.append(await self._state.send(key=key, value=state.dumps()))
        await asyncio.gather(*futures)

    def _read_all(self, parsed: Sequence[tuple[StorageEvent, bytes]]) -> tuple[list[_Indexed], list[Dead]]:
        indexed: list[_Indexed] = []
        dead: list[Dead] = []
        now = datetime.now(UTC)
        for event, raw in parsed:
            try:
                indexed.append(_Indexed(event, self._read(event, now)))
            except StorageUnavailable:
                raise  # the storage, not this file: the whole batch waits for it
            except Exception as exc:  # anything wrong with one file dead-letters that event only
                reason = str(exc) if isinstance(exc, PacsflowError) else f"{type(exc).__name__}: {exc}"
                dead.append(Dead(event, raw, reason))
        return indexed, dead

    def _read(self, event: StorageEvent, now: datetime) -> IndexedInstance:
        try:
            location = InstanceLocation(
                TenantId(event.TenantID),
                Uid(event.StudyInstanceUID),
                Uid(event.SeriesInstanceUID),
                Uid(event.SopInstanceUID),
            )
        except PacsflowError as exc:
            raise UnindexableInstance(f"event: {exc}") from exc
        if str(location.relative) != event.FilePath:
            raise UnindexableInstance(f"FilePath {event.FilePath!r} is not where the event's UIDs say")
        path = self._layout.instance_path(location)
        try:
            if not path.is_file():
                if not self._layout.root.is_dir():
                    raise StorageUnavailable(
                        f"the storage root {self._layout.root} is not there (not mounted?)"
                    )
                raise UnindexableInstance(f"file missing: {path}")
            threshold = self._settings.bulkdata_threshold
            dataset = dcmread(path, defer_size=metadata.deferred_size(threshold))
        except OSError as exc:
            # The kernel's errors carry an errno (EIO, EACCES, ESTALE, EMFILE): the storage's state.
            # pydicom's own OSErrors about a file's content carry none: that file is bad.
            if exc.errno is not None:
                raise StorageUnavailable(f"the storage is not readable: {exc}") from exc
            raise
        indexed = index_instance(
            event,
            dataset,
            now,
            bulkdata_threshold=threshold,
            frame_index=frames.frame_index(dataset),
            viewer_syntaxes=self._settings.viewer_syntaxes,
        )
        if indexed.unconverted:
            _log.warning(
                "elements_not_in_metadata",
                reason="values do not convert",
                elements=list(indexed.unconverted),
                sop_instance_uid=event.SopInstanceUID,
                tenant=event.TenantID,
                trace_id=event.TraceID,
            )
        return indexed

    async def _write(self, batch: Sequence[_Indexed]) -> tuple[list[postgres.SeriesCount], list[Dead]]:
        if not batch:
            return [], []
        return await self._database.run(lambda conn: self._upsert(conn, batch))

    async def _upsert(
        self, conn: asyncpg.Connection, batch: Sequence[_Indexed]
    ) -> tuple[list[postgres.SeriesCount], list[Dead]]:
        """Raises only what holds the stream; instances whose values are refused come back dead."""
        try:
            return await postgres.upsert_index(conn, [item.instance for item in batch]), []
        except Exception as exc:
            if not is_data_error(exc):
                raise
        # One instance's values fail a statement: write them one by one to find it.
        counts: list[postgres.SeriesCount] = []
        dead: list[Dead] = []
        for item in batch:
            try:
                counts += await postgres.upsert_index(conn, [item.instance])
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                dead.append(Dead(item.event, item.event.dumps(), f"database refused it: {describe(exc)}"))
        return counts, dead

    async def _publish(
        self, written: Sequence[_Indexed], counts: Sequence[postgres.SeriesCount], dead: Sequence[Dead]
    ) -> None:
        futures: list[Awaitable[Any]] = []
        for item in written:
            key = topics.study_key(item.instance.image.study_uid)
            futures.append(await self._image.send(key=key, value=item.instance.image.dumps()))
            row = item.instance.instance
            if row.conversion_status == CONVERSION_PENDING:
                request = ConversionRequest(
                    tenant_id=row.tenant_id,
                    study_uid=row.study_uid,
                    series_uid=row.series_uid,
                    sop_uid=row.sop_uid,
                    file_path=row.file_path,
                    source_ts=row.transfer_syntax_uid,
                    target_ts=self._settings.convert_to,
                    trace_id=row.trace_id,
                )
                futures.append(await self._conversions.send(key=key, value=request.dumps()))
        for count in counts:
            record = state_record(count.series, count.instances, count.created)
            futures.append(
                await self._state.send(key=topics.study_key(record.study_uid), value=record.dumps())
            )
        failed = iso_utc(datetime.now(UTC))
        for gone in dead:
            event = gone.event
            key = topics.study_key(event.StudyInstanceUID) if event else b""
            letter = StorageDeadLetter(
                event=event,
                raw=None if event else gone.raw.decode(errors="replace"),
                reason=gone.reason,
                failed_time=failed,
                node_id=self._settings.node_id,
            )
            futures.append(await self._dlq.send(key=key, value=letter.dumps()))
            _log.warning(
                "event_dead_lettered",
                reason=gone.reason,
                sop_instance_uid=event.SopInstanceUID if event else None,
                tenant=event.TenantID if event else None,
                trace_id=event.TraceID if event else None,
            )
        await asyncio.gather(*futures)

    async def _retry(self, what: str, operation: Callable[[], Awaitable[Any]]) -> Any:
        """Until it works: what can never work was dead-lettered before, what fails now holds."""
        return await self.hold.until_done(what, operation)

    def _log_batch(
        self, events: Sequence[faust.EventT[bytes]], indexed: int, dead: int, started: float
    ) -> None:
        last: dict[Any, int] = {}
        for event in events:
            tp = event.message.tp
            last[tp] = max(last.get(tp, -1), event.message.offset)
        lag: dict[str, int | None] = {}  # JSON object keys are strings
        for tp, offset in last.items():
            try:
                lag[str(tp.partition)] = self._app.consumer.highwater(tp) - offset - 1
            except Exception:  # the highwater is not known yet
                lag[str(tp.partition)] = None
        _log.info(
            "batch_indexed",
            partitions=sorted(tp.partition for tp in last),
            count=len(events),
            indexed=indexed,
            dead_lettered=dead,
            lag=lag,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )


@dataclass(frozen=True)
class _Indexed:
    event: StorageEvent
    instance: IndexedInstance


def register(app: faust.App, settings: Settings, database: Database, cache: Cache) -> None:
    """Declare the index agent on ``app``."""
    storage = study_keyed(app, topics.STORAGE_QUEUE, settings.kafka_partitions)
    indexer = Indexer(settings, database, cache, app)

    @app.agent(storage, name="index_instance")
    async def index_instance_agent(stream: faust.StreamT[bytes]) -> None:
        manual = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
        indexer.hold.flowing()  # a note left by this node's last run, which may have died held
        async for batch in batches(manual.events(), BATCH_SIZE, BATCH_WITHIN_S):
            await indexer.index_batch(batch)
            for event in batch:
                await manual.ack(event)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == topics.STORAGE_QUEUE)
        _log.info("partitions_assigned", topic=topics.STORAGE_QUEUE, partitions=mine)
