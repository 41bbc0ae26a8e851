"""dicom_json_meta's bookkeeping on a real PostgreSQL: versions, what is current, the overdue sweep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from pipeline.stores import json_meta

T = TypeVar("T")
STUDY = "1.2.3"


def with_conn(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


async def flag(conn: asyncpg.Connection, series: str, age_s: float = 0) -> None:
    """What the index does for a series it writes: insert, or raise the version."""
    await conn.execute(
        """
        INSERT INTO dicom_json_meta (tenant_id, study_uid, series_uid, study_uid_hash, series_uid_hash,
                                     study_date_origin, flag_time)
        VALUES ('default', $1, $2, 'h', 'h', '', now() - make_interval(secs => $3))
        ON CONFLICT (tenant_id, study_uid, series_uid) DO UPDATE SET
            flag_time = EXCLUDED.flag_time, json_status = 0, version = dicom_json_meta.version + 1
        """,
        STUDY,
        series,
        age_s,
    )


async def versions(conn: asyncpg.Connection) -> dict[str, json_meta.SeriesVersion]:
    rows = await conn.fetch("SELECT series_uid FROM dicom_json_meta")
    found = {}
    for row in rows:
        version = await json_meta.series_version(conn, "default", STUDY, row["series_uid"])
        assert version is not None
        found[row["series_uid"]] = version
    return found


def test_a_series_is_current_only_at_the_version_its_files_were_built_from(database: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> None:
        await flag(conn, "1.1")
        await flag(conn, "1.2")
        assert not any(v.series_current or v.in_study_file for v in (await versions(conn)).values())

        await json_meta.mark_built(conn, "default", STUDY, {"1.1": 1, "1.2": 1}, rebuilt=["1.1", "1.2"])
        found = await versions(conn)
        assert all(v.series_current and v.in_study_file for v in found.values())
        assert await json_meta.pending_counts(conn) == {"pending": 0, "done": 2, "failed": 0}

        # An index write while a regeneration was building: it recorded the older version and
        # the series stays pending.
        await flag(conn, "1.1")
        await json_meta.mark_built(conn, "default", STUDY, {"1.1": 1, "1.2": 1}, rebuilt=["1.1"])
        found = await versions(conn)
        assert not found["1.1"].series_current and found["1.2"].series_current
        assert await json_meta.pending_counts(conn) == {"pending": 1, "done": 1, "failed": 0}

        await json_meta.mark_failed(conn, "default", STUDY, "OSError: disk on fire")
        row = await conn.fetchrow(
            "SELECT json_status, retry_times, last_error FROM dicom_json_meta WHERE series_uid = '1.1'"
        )
        assert tuple(row) == (2, 1, "OSError: disk on fire")
        assert await json_meta.pending_counts(conn) == {"pending": 0, "done": 1, "failed": 1}

    with_conn(database, scenario)


def test_the_sweep_takes_overdue_series_once_and_retries_failures_after_a_backoff(database: str) -> None:
    async def setup(conn: asyncpg.Connection) -> None:
        await flag(conn, "2.1", age_s=60)
        await flag(conn, "2.2", age_s=60)
        await flag(conn, "2.3", age_s=0)  # its window may still be open

    with_conn(database, setup)

    async def while_another_sweeper_holds_one() -> list[tuple[str, str]]:
        other, mine = await asyncpg.connect(database), await asyncpg.connect(database)
        try:
            async with other.transaction():  # another worker's claim, not committed yet
                await other.execute("SELECT 1 FROM dicom_json_meta WHERE series_uid = '2.1' FOR UPDATE")
                return await json_meta.claim_overdue(mine, 10, 10)
        finally:
            await other.close()
            await mine.close()

    assert asyncio.run(while_another_sweeper_holds_one()) == [("default", STUDY)]
    stamped = with_conn(
        database, lambda c: c.fetch("SELECT series_uid FROM dicom_json_meta WHERE attempt_time IS NOT NULL")
    )
    assert {r["series_uid"] for r in stamped} == {"2.2"}  # skipped the row being claimed, no wait
    assert with_conn(database, lambda c: json_meta.claim_overdue(c, 10, 10)) == [("default", STUDY)]  # 2.1
    assert with_conn(database, lambda c: json_meta.claim_overdue(c, 10, 10)) == []  # claimed: backing off

    async def failing_for_days(conn: asyncpg.Connection) -> list[tuple[str, str]]:
        await conn.execute(
            "UPDATE dicom_json_meta SET json_status = 2, retry_times = 5000,"
            " attempt_time = now() - interval '301 seconds' WHERE series_uid = '2.3'"
        )
        await conn.execute("UPDATE dicom_json_meta SET flag_time = now() - interval '1 hour'")
        return await json_meta.claim_overdue(conn, 10, 10)

    assert with_conn(database, failing_for_days) == [("default", STUDY)]  # backoff capped at 5 min
    with_conn(
        database, lambda c: c.execute("UPDATE dicom_json_meta SET json_status = 1 WHERE series_uid = '2.3'")
    )

    async def failed_long_ago(conn: asyncpg.Connection) -> list[tuple[str, str]]:
        await conn.execute(
            "UPDATE dicom_json_meta SET json_status = 2, retry_times = 3,"
            " attempt_time = now() - interval '9 seconds' WHERE series_uid = '2.1'"
        )
        await conn.execute(
            "UPDATE dicom_json_meta SET json_status = 2, retry_times = 3,"
            " attempt_time = now() - interval '7 seconds' WHERE series_uid = '2.2'"
        )
        return await json_meta.claim_overdue(conn, 10, 10)

    assert with_conn(database, failed_long_ago) == [("default", STUDY)]  # 2.1 only: 2^3 s have passed
    claimed = with_conn(
        database,
        lambda c: c.fetch(
            "SELECT series_uid FROM dicom_json_meta WHERE attempt_time > now() - interval '1 second'"
            " AND json_status <> 1"
        ),
    )
    assert {r["series_uid"] for r in claimed} == {"2.1"}
