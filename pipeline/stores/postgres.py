"""PostgreSQL: versioned migrations and the index's writes and reads (asyncpg).

Functions take a pool or a connection; they never create one (the worker's ``Database`` service
owns the pool). Writes are upserts, so processing an event twice leaves the same rows; instance
counts are computed from the instance rows in the same transaction, never incremented.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from pipeline.indexing import IndexedInstance, SeriesRow
from pipeline.stores import changefeed

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MIGRATION_LOCK = 0x70616373  # any constant: serialises concurrent `pacsflow migrate` runs

# Errors that say the connection or the server is not there (retry), as opposed to a statement
# that fails on its data (it would fail again).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped with pacsflow, in order."""
    found = []
    for entry in resources.files("pipeline.stores").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not applied yet, each in its own transaction; return their names."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS pacsflow_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM pacsflow_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO pacsflow_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(f"{version:04d}_{name}")
    finally:
        await conn.close()
    return applied


# Statements are built from our own column names, never from values: S608 does not apply.
_INSTANCE_COLUMNS = (
    "tenant_id", "study_uid", "series_uid", "sop_uid", "sop_class_uid", "instance_number",
    "transfer_syntax_uid", "number_of_frames", "rows", "columns", "file_path", "file_size",
    "received_time", "trace_id", "json_fragment", "frame_index", "conversion_status",
)  # fmt: skip
_UPSERT_INSTANCE = f"""
INSERT INTO dicom_instance_meta ({", ".join(_INSTANCE_COLUMNS)})
VALUES ({", ".join(f"${i}" for i in range(1, len(_INSTANCE_COLUMNS) + 1))})
ON CONFLICT (tenant_id, study_uid, series_uid, sop_uid) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _INSTANCE_COLUMNS[4:])}, indexed_time = clock_timestamp(),
    converted_syntax = NULL, converted_frame_index = NULL, conversion_error = NULL
"""

_SERIES_COLUMNS = tuple(SeriesRow.__dataclass_fields__)
_UPSERT_SERIES = f"""
INSERT INTO dicom_state_meta ({", ".join(_SERIES_COLUMNS)}, series_related_instances, created_time,
                              updated_time)
VALUES ({", ".join(f"${i}" for i in range(1, len(_SERIES_COLUMNS) + 1))}, 0, now(), now())
ON CONFLICT (tenant_id, study_uid, series_uid) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _SERIES_COLUMNS[4:])}, updated_time = now()
"""

_FLAG_SERIES = """
INSERT INTO dicom_json_meta (tenant_id, study_uid, series_uid, study_uid_hash, series_uid_hash,
                             study_date_origin, flag_time)
VALUES ($1, $2, $3, $4, $5, $6, now())
ON CONFLICT (tenant_id, study_uid, series_uid) DO UPDATE SET
    flag_time = now(), json_status = 0, retry_times = 0, version = dicom_json_meta.version + 1
"""

_COUNT_SERIES = """
UPDATE dicom_state_meta s
SET series_related_instances = c.n
FROM (
    SELECT i.tenant_id, i.study_uid, i.series_uid, count(*)::int AS n
    FROM dicom_instance_meta i
    JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, study_uid, series_uid)
      USING (tenant_id, study_uid, series_uid)
    GROUP BY 1, 2, 3
) c
WHERE s.tenant_id = c.tenant_id AND s.study_uid = c.study_uid AND s.series_uid = c.series_uid
RETURNING s.tenant_id, s.study_uid, s.series_uid, s.series_related_instances, s.created_time
"""


@dataclass(frozen=True)
class SeriesCount:
    series: SeriesRow
    instances: int
    created: datetime


async def upsert_index(conn: asyncpg.Connection, batch: Sequence[IndexedInstance]) -> list[SeriesCount]:
    """Write a batch of instances and their series, and their change feed entries, in one
    transaction; return each touched series with its instance count as the rows now say."""
    latest: dict[tuple[str, str, str], SeriesRow] = {}
    for item in batch:  # the last instance of a series in the batch speaks for it
        series = item.series
        latest[(series.tenant_id, series.study_uid, series.series_uid)] = series
    instances = [(i.tenant_id, i.study_uid, i.series_uid, i.sop_uid) for i in (b.instance for b in batch)]
    async with conn.transaction():
        existed = await changefeed.existing(conn, instances)
        await conn.executemany(
            _UPSERT_INSTANCE,
            [tuple(getattr(item.instance, c) for c in _INSTANCE_COLUMNS) for item in batch],
        )
        await conn.executemany(_UPSERT_SERIES, [tuple(s.columns().values()) for s in latest.values()])
        await conn.executemany(
            _FLAG_SERIES,
            [
                (
                    s.tenant_id,
                    s.study_uid,
                    s.series_uid,
                    s.study_uid_hash,
                    s.series_uid_hash,
                    s.study_date_origin,
                )
                for s in latest.values()
            ],
        )
        keys = list(zip(*latest, strict=True))
        rows = await conn.fetch(_COUNT_SERIES, list(keys[0]), list(keys[1]), list(keys[2]))
        await changefeed.record_stores(conn, instances, existed)  # last: it locks until commit
    return [
        SeriesCount(
            latest[(r["tenant_id"], r["study_uid"], r["series_uid"])],
            r["series_related_instances"],
            r["created_time"],
        )
        for r in rows
    ]


async def instance_paths(pool: asyncpg.Pool, tenants: Iterable[str] | None = None) -> dict[str, str]:
    """``file_path -> tenant`` of every indexed instance (of ``tenants``, or all)."""
    if tenants is None:
        rows = await pool.fetch("SELECT file_path, tenant_id FROM dicom_instance_meta")
    else:
        rows = await pool.fetch(
            "SELECT file_path, tenant_id FROM dicom_instance_meta WHERE tenant_id = ANY($1::text[])",
            list(tenants),
        )
    return {r["file_path"]: r["tenant_id"] for r in rows}


# Deletion. The web server lists what a DELETE removes (``deletion_scope``) with the index's clock
# as the cutoff; the index agent, in partition order with the study's stores, reads the same scope
# (``doomed``), removes the files, then the rows (``delete_rows``): a crash in between leaves rows
# whose file is gone, which the redelivered event removes, never a file that reconcile would index.
_SCOPE = """
SELECT i.series_uid, i.sop_uid, i.file_path, i.sop_class_uid, i.transfer_syntax_uid, i.file_size,
       s.patient_id, s.study_date_origin
FROM dicom_instance_meta i
JOIN dicom_state_meta s USING (tenant_id, study_uid, series_uid)
WHERE i.tenant_id = $1 AND i.study_uid = $2
  AND ($3::text IS NULL OR i.series_uid = $3) AND ($4::text IS NULL OR i.sop_uid = $4)
  AND i.indexed_time <= $5
ORDER BY i.series_uid, i.sop_uid
"""


@dataclass(frozen=True)
class DoomedInstance:
    series_uid: str
    sop_uid: str
    file_path: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_size: int
    patient_id: str
    study_date_origin: str


def _doomed(rows: Iterable[asyncpg.Record]) -> list[DoomedInstance]:
    return [DoomedInstance(**dict(r)) for r in rows]


async def deletion_scope(
    pool: asyncpg.Pool, tenant: str, study: str, series: str | None, sop: str | None
) -> tuple[datetime, list[DoomedInstance]]:
    """The index's clock now, and the instances a DELETE accepted now removes: one snapshot, so
    that the list and the cutoff agree. An index write that took its ``indexed_time`` before the
    cutoff but commits after this snapshot is not listed, yet removed by the agent: rare (a batch
    committing during the request), and what the index held a moment later."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        cutoff: datetime = await conn.fetchval("SELECT clock_timestamp()")
        rows = await conn.fetch(_SCOPE, tenant, study, series, sop, cutoff)
    return cutoff, _doomed(rows)


async def doomed(
    conn: asyncpg.Connection, tenant: str, study: str, series: str | None, sop: str | None, cutoff: datetime
) -> list[DoomedInstance]:
    return _doomed(await conn.fetch(_SCOPE, tenant, study, series, sop, cutoff))


@dataclass(frozen=True)
class Deleted:
    """What ``delete_rows`` changed: series left with fewer instances, series gone."""

    remaining: list[SeriesCount]
    removed: list[SeriesRow]
    study_gone: bool


async def delete_rows(
    conn: asyncpg.Connection, tenant: str, study: str, gone: Sequence[DoomedInstance], cutoff: datetime
) -> Deleted:
    """Remove the rows of ``gone`` in one transaction, recount their series, drop emptied series
    (with their metadata state), mark what the study's metadata must be rebuilt for, and add a
    change feed entry per row removed (a redelivered deletion removes none, adds none)."""
    series = sorted({g.series_uid for g in gone})
    async with conn.transaction():
        states = {
            r["series_uid"]: SeriesRow(**{c: r[c] for c in _SERIES_COLUMNS})
            for r in await conn.fetch(
                f"SELECT {', '.join(_SERIES_COLUMNS)} FROM dicom_state_meta"
                " WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = ANY($3::text[])",
                tenant,
                study,
                series,
            )
        }
        removed = await conn.fetch(
            """
            DELETE FROM dicom_instance_meta i
            USING unnest($3::text[], $4::text[]) AS k(series_uid, sop_uid)
            WHERE i.tenant_id = $1 AND i.study_uid = $2
              AND i.series_uid = k.series_uid AND i.sop_uid = k.sop_uid AND i.indexed_time <= $5
            RETURNING i.series_uid, i.sop_uid
            """,
            tenant,
            study,
            [g.series_uid for g in gone],
            [g.sop_uid for g in gone],
            cutoff,
        )
        counts = {
            r["series_uid"]: r["n"]
            for r in await conn.fetch(
                "SELECT series_uid, count(*)::int AS n FROM dicom_instance_meta"
                " WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = ANY($3::text[]) GROUP BY 1",
                tenant,
                study,
                series,
            )
        }
        emptied = [s for s in series if counts.get(s, 0) == 0]
        kept = [s for s in series if counts.get(s, 0) > 0]
        await conn.execute(
            "DELETE FROM dicom_state_meta"
            " WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = ANY($3::text[])",
            tenant,
            study,
            emptied,
        )
        await conn.execute(
            "DELETE FROM dicom_json_meta"
            " WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = ANY($3::text[])",
            tenant,
            study,
            emptied,
        )
        rows = await conn.fetch(
            """
            UPDATE dicom_state_meta s SET series_related_instances = k.n, updated_time = now()
            FROM unnest($3::text[], $4::int[]) AS k(series_uid, n)
            WHERE s.tenant_id = $1 AND s.study_uid = $2 AND s.series_uid = k.series_uid
            RETURNING s.series_uid, s.created_time
            """,
            tenant,
            study,
            kept,
            [counts[s] for s in kept],
        )
        # Series that lost instances are rebuilt; when a series went, the study file is rebuilt
        # from the series that are left (none of them is stale on its own).
        await conn.execute(
            """
            UPDATE dicom_json_meta SET
                version = version + (series_uid = ANY($3::text[]))::int,
                study_built_version = CASE WHEN $4 THEN NULL ELSE study_built_version END,
                json_status = 0, flag_time = now(), retry_times = 0
            WHERE tenant_id = $1 AND study_uid = $2 AND (series_uid = ANY($3::text[]) OR $4)
            """,
            tenant,
            study,
            kept,
            bool(emptied),
        )
        left = await conn.fetchval(
            "SELECT count(*) FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2", tenant, study
        )
        await changefeed.record_deletes(  # last: it locks until commit
            conn, sorted((tenant, study, r["series_uid"], r["sop_uid"]) for r in removed)
        )
    return Deleted(
        remaining=[
            SeriesCount(states[r["series_uid"]], counts[r["series_uid"]], r["created_time"]) for r in rows
        ],
        removed=[states[s] for s in emptied if s in states],
        study_gone=left == 0,
    )
