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
    "received_time", "trace_id", "json_fragment", "frame_index",
)  # fmt: skip
_UPSERT_INSTANCE = f"""
INSERT INTO dicom_instance_meta ({", ".join(_INSTANCE_COLUMNS)})
VALUES ({", ".join(f"${i}" for i in range(1, len(_INSTANCE_COLUMNS) + 1))})
ON CONFLICT (tenant_id, study_uid, series_uid, sop_uid) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _INSTANCE_COLUMNS[4:])}, indexed_time = clock_timestamp()
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
    """Write a batch of instances and their series in one transaction; return each touched series
    with its instance count as the rows now say."""
    latest: dict[tuple[str, str, str], SeriesRow] = {}
    for item in batch:  # the last instance of a series in the batch speaks for it
        series = item.series
        latest[(series.tenant_id, series.study_uid, series.series_uid)] = series
    async with conn.transaction():
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
