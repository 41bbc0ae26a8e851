"""Metadata regeneration, driven by the stream.

The index agent publishes one ``DicomStateMeta`` per series it wrote, after the write committed.
``collect_series_writes`` counts them in the tumbling-window table; when a window closes, the
series' study is queued for regeneration, once however many instances arrived in the window.

Nothing is lost with a window: the index marks each series it writes pending in
``dicom_json_meta``, and a sweep regenerates series left pending longer than a window should
take (the worker holding the window died, the table was rebuilt) or failed and due for a retry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import faust

from pipeline import log, topics
from pipeline.agents.channels import study_keyed
from pipeline.agents.database import Database, is_data_error
from pipeline.cache import Cache
from pipeline.models import DicomStateMeta, TenantId, Uid
from pipeline.regeneration import MetadataBuilder
from pipeline.settings import Settings
from pipeline.stores import json_meta
from pipeline.stores.files import StorageLayout
from pipeline.stores.postgres import TRANSIENT_ERRORS
from pipeline.tables.metadata_window import metadata_window, series_key

_log = log.get(__name__)
SWEEP_LIMIT = 500


def overdue_after(window_s: float) -> float:
    """How long a series may stay pending before the sweep takes it: two windows and a margin
    for the window's own close and regeneration, so that a live window normally wins."""
    return 2 * window_s + 5.0


class Regenerator(faust.Service):
    """Regenerates queued studies one at a time, and sweeps for overdue ones."""

    def __init__(self, settings: Settings, database: Database, cache: Cache) -> None:
        super().__init__()
        self._settings = settings
        self._database = database
        self._cache = cache
        self.builder = MetadataBuilder(
            StorageLayout(settings.storage_root),
            settings.public_base,
            settings.default_tenant,
            settings.bulkdata_threshold,
        )
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()

    def request(self, tenant: str, study: str) -> None:
        key = (tenant, study)
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    @faust.Service.task
    async def _regenerate_requested(self) -> None:
        while not self.should_stop:
            key = await self._queue.get()
            self._queued.discard(key)
            try:
                await self._regenerate(*key)
            except Exception as exc:  # one study's trouble must never stop the others'
                _log.error(
                    "metadata_failed", tenant=key[0], study_uid=key[1], error=f"{type(exc).__name__}: {exc}"
                )

    @faust.Service.task
    async def _sweep(self) -> None:
        interval = self._settings.metadata_window_s
        await self.sleep(interval)
        while not self.should_stop:
            try:
                pool = await self._database.pool()
                async with pool.acquire() as conn:
                    due = await json_meta.claim_overdue(
                        conn, overdue_after(self._settings.metadata_window_s), SWEEP_LIMIT
                    )
            except Exception as exc:  # the sweep is the safety net: it must outlive any one failure
                _log.warning("metadata_sweep_failed", error=f"{type(exc).__name__}: {exc}")
                due = []
            if due:
                _log.info("metadata_overdue", studies=len(due))
            for tenant, study in due:
                self.request(tenant, study)
            await self.sleep(interval)

    async def _regenerate(self, tenant: str, study: str) -> None:
        try:
            pool = await self._database.pool()
            async with pool.acquire() as conn:
                try:
                    done = await self.builder.regenerate(conn, TenantId(tenant), Uid(study), self._cache)
                except Exception as exc:
                    if _database_state(exc):
                        raise
                    error = f"{type(exc).__name__}: {exc}"
                    _log.error("metadata_failed", tenant=tenant, study_uid=study, error=error)
                    await json_meta.mark_failed(conn, tenant, study, error)
                    return
        except Exception as exc:
            if not _database_state(exc):
                raise
            # Still pending in dicom_json_meta: the sweep takes it up when the database is back.
            error = f"{type(exc).__name__}: {exc}"
            _log.warning("metadata_postponed", tenant=tenant, study_uid=study, error=error)
            return
        if done is None:
            return
        _log.info(
            "metadata_regenerated",
            tenant=tenant,
            study_uid=study,
            series=list(done.series),
            instances=done.instances,
            study_bytes=done.study_bytes,
            study_gzip_bytes=done.study_gzip_bytes,
            series_bytes=done.series_bytes,
            series_gzip_bytes=done.series_gzip_bytes,
            read_ms=done.read_ms,
            build_ms=done.build_ms,
            write_ms=done.write_ms,
        )


def _database_state(exc: BaseException) -> bool:
    """The database's state, not the study, stopped the regeneration (away, read-only, full, a
    timeout): the study stays pending rather than being marked failed."""
    return isinstance(exc, TRANSIENT_ERRORS) or (
        isinstance(exc, asyncpg.PostgresError) and not is_data_error(exc)
    )


def register(app: faust.App, settings: Settings, database: Database, cache: Cache) -> Regenerator:
    """Declare the window table, its agent and the regenerator on ``app``."""
    regenerator = Regenerator(settings, database, cache)
    app.add_dependency(regenerator)

    def window_closed(tenant: str, study: str, series: str, writes: int, window_start: float) -> None:
        _log.info(
            "metadata_window_closed",
            tenant=tenant,
            study_uid=study,
            series_uid=series,
            writes=writes,
            window_start=window_start,
        )
        regenerator.request(tenant, study)

    window = metadata_window(app, settings, window_closed)
    states = study_keyed(app, topics.DICOM_STATE_QUEUE, settings.kafka_partitions)

    @app.agent(states, name="collect_series_writes")
    async def collect_series_writes(stream: faust.StreamT[Any]) -> None:
        async for raw in stream:
            try:
                state = DicomStateMeta.loads(raw)
            except ValueError as exc:
                # Only the index agent writes this topic; a record it cannot have written is
                # someone else's, and the index still has the series flagged for regeneration.
                _log.warning("foreign_state_record_skipped", error=str(exc))
                continue
            window[series_key(state.tenant_id, state.study_uid, state.series_uid)] += 1

    return regenerator
