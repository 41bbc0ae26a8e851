"""PostgreSQL reads and writes of series and study metadata: fragments, versions, what is pending.

``dicom_json_meta`` has one row per series. ``version`` goes up with each index write touching the
series; ``built_version`` is the version its ``.json`` file was built from and
``study_built_version`` the version of it the study's ``.json`` includes. ``json_status`` is 0
(pending), 1 (both files current) or 2 (the last regeneration failed; ``retry_times``,
``last_error``). Snapshots are read in one repeatable-read transaction so that versions and
fragments agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg

PENDING, DONE, FAILED = 0, 1, 2


@dataclass(frozen=True)
class SeriesVersion:
    series_uid: str
    version: int
    built_version: int | None
    study_built_version: int | None

    @property
    def series_current(self) -> bool:
        return self.built_version == self.version

    @property
    def in_study_file(self) -> bool:
        return self.study_built_version == self.version


@dataclass(frozen=True)
class Fragment:
    series_uid: str
    sop_uid: str
    file_path: str
    body: bytes | None
    """None for an instance indexed before fragments existed: built from its file instead."""


@dataclass(frozen=True)
class StudySnapshot:
    series: list[SeriesVersion]
    fragments: list[Fragment]
    """Every instance of the study, in metadata order: series number, series, instance number."""


@dataclass(frozen=True)
class SeriesSnapshot:
    version: SeriesVersion
    fragments: list[Fragment]
    """In metadata order: instance number, then SOP instance UID."""


_VERSIONS = """
SELECT series_uid, version, built_version, study_built_version FROM dicom_json_meta
WHERE tenant_id = $1 AND study_uid = $2
"""
_STUDY_FRAGMENTS = """
SELECT i.series_uid, i.sop_uid, i.file_path, i.json_fragment
FROM dicom_instance_meta i
JOIN dicom_state_meta s USING (tenant_id, study_uid, series_uid)
WHERE i.tenant_id = $1 AND i.study_uid = $2
ORDER BY s.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST, i.sop_uid
"""
_SERIES_FRAGMENTS = """
SELECT series_uid, sop_uid, file_path, json_fragment FROM dicom_instance_meta
WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = $3
ORDER BY instance_number NULLS LAST, sop_uid
"""


def _version(row: asyncpg.Record) -> SeriesVersion:
    return SeriesVersion(row["series_uid"], row["version"], row["built_version"], row["study_built_version"])


def _fragments(rows: Iterable[asyncpg.Record]) -> list[Fragment]:
    return [Fragment(r["series_uid"], r["sop_uid"], r["file_path"], r["json_fragment"]) for r in rows]


async def read_instance(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, study: str, series: str, sop: str
) -> Fragment | None:
    row = await conn.fetchrow(
        "SELECT series_uid, sop_uid, file_path, json_fragment FROM dicom_instance_meta"
        " WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = $3 AND sop_uid = $4",
        tenant,
        study,
        series,
        sop,
    )
    return _fragments([row])[0] if row is not None else None


async def read_study(conn: asyncpg.Connection, tenant: str, study: str) -> StudySnapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        versions = await conn.fetch(_VERSIONS, tenant, study)
        fragments = await conn.fetch(_STUDY_FRAGMENTS, tenant, study)
    return StudySnapshot([_version(r) for r in versions], _fragments(fragments))


async def read_series(
    conn: asyncpg.Connection, tenant: str, study: str, series: str
) -> SeriesSnapshot | None:
    """The series' version and fragments, or None when the index does not know the series."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(_VERSIONS + " AND series_uid = $3", tenant, study, series)
        if row is None:
            return None
        fragments = await conn.fetch(_SERIES_FRAGMENTS, tenant, study, series)
    return SeriesSnapshot(_version(row), _fragments(fragments))


async def series_version(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, study: str, series: str
) -> SeriesVersion | None:
    """One primary-key lookup: is the series' file current (``series_current``)?"""
    row = await conn.fetchrow(_VERSIONS + " AND series_uid = $3", tenant, study, series)
    return _version(row) if row is not None else None


async def study_versions(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, study: str
) -> list[SeriesVersion]:
    """Every series of the study: the study file is current when each is ``in_study_file``."""
    return [_version(row) for row in await conn.fetch(_VERSIONS, tenant, study)]


async def mark_built(
    conn: asyncpg.Connection,
    tenant: str,
    study: str,
    included: Mapping[str, int],
    rebuilt: Iterable[str],
) -> None:
    """Record a regeneration: the study file holds each series of ``included`` at its version,
    and the series files of ``rebuilt`` were written. A series whose version moved on meanwhile
    stays pending."""
    rebuilt = set(rebuilt)
    series = list(included)
    await conn.execute(
        """
        UPDATE dicom_json_meta m SET
            built_version = CASE WHEN k.rebuilt THEN k.version ELSE m.built_version END,
            study_built_version = k.version,
            regenerations = m.regenerations + k.rebuilt::int,
            json_status = CASE
                WHEN m.version = k.version
                     AND (k.rebuilt OR m.built_version = k.version) THEN 1
                ELSE 0 END,
            built_time = now(), attempt_time = now(), retry_times = 0, last_error = NULL
        FROM unnest($3::text[], $4::bigint[], $5::bool[]) AS k(series_uid, version, rebuilt)
        WHERE m.tenant_id = $1 AND m.study_uid = $2 AND m.series_uid = k.series_uid
        """,
        tenant,
        study,
        series,
        [included[s] for s in series],
        [s in rebuilt for s in series],
    )


async def mark_failed(conn: asyncpg.Connection, tenant: str, study: str, error: str) -> None:
    """Every series of the study that is not current: failed, retried later with backoff."""
    await conn.execute(
        """
        UPDATE dicom_json_meta SET json_status = 2, retry_times = retry_times + 1,
            last_error = $3, attempt_time = now()
        WHERE tenant_id = $1 AND study_uid = $2 AND json_status <> 1
        """,
        tenant,
        study,
        error[:2000],
    )


async def claim_overdue(conn: asyncpg.Connection, older_than_s: float, limit: int) -> list[tuple[str, str]]:
    """Studies with a series left pending longer than a window should take (a worker died, a
    window was lost) or failed and due for a retry (1 s doubling to 5 min). Claimed rows are
    stamped so that two workers sweeping at once take different ones."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT tenant_id, study_uid, series_uid FROM dicom_json_meta
            WHERE json_status <> 1
              AND flag_time < now() - make_interval(secs => $1)
              AND (attempt_time IS NULL
                   OR attempt_time < now()
                      - make_interval(secs => least(power(2, least(retry_times, 9)), 300)))
            ORDER BY flag_time
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE dicom_json_meta m SET attempt_time = now()
        FROM due
        WHERE m.tenant_id = due.tenant_id AND m.study_uid = due.study_uid AND m.series_uid = due.series_uid
        RETURNING m.tenant_id, m.study_uid
        """,
        older_than_s,
        limit,
    )
    return sorted({(r["tenant_id"], r["study_uid"]) for r in rows})


async def pending_counts(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Series per status, for ``pacsflow status``."""
    rows = await conn.fetch("SELECT json_status, count(*)::int AS n FROM dicom_json_meta GROUP BY 1")
    names = {PENDING: "pending", DONE: "done", FAILED: "failed"}
    counts = {name: 0 for name in names.values()}
    for row in rows:
        counts[names.get(row["json_status"], str(row["json_status"]))] = row["n"]
    return counts
