from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from pipeline.stores.postgres import migrations
from tests.conftest import query
from tests.support.services import pacsflow


def migrate(dsn: str, tmp_path: Path) -> str:
    result = pacsflow("migrate", env={"PACSFLOW_DATABASE_URL": dsn, "PACSFLOW_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _migrated_to(conn: asyncpg.Connection, version: int) -> None:
    """The database as ``pacsflow migrate`` of a release whose last migration was ``version`` left it."""
    await conn.execute(
        "CREATE TABLE pacsflow_migrations (version int PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number, name, sql in migrations()[:version]:
        await conn.execute(sql)
        await conn.execute("INSERT INTO pacsflow_migrations (version, name) VALUES ($1, $2)", number, name)


def test_migrate_applies_everything_to_an_empty_database_once(empty_database: str, tmp_path: Path) -> None:
    assert "applied: 0001_index, 0002_metadata, 0003_read_path, 0004_conversion, 0005_study_list" in migrate(
        empty_database, tmp_path
    )
    assert "up to date" in migrate(empty_database, tmp_path)
    applied = query(empty_database, "SELECT version, name FROM pacsflow_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [
        (1, "index"),
        (2, "metadata"),
        (3, "read_path"),
        (4, "conversion"),
        (5, "study_list"),
        (6, "change_feed"),
    ]
    tables = {
        r["tablename"]
        for r in query(empty_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"dicom_state_meta", "dicom_json_meta", "dicom_instance_meta"} <= tables


def test_migrate_takes_a_database_of_the_previous_version_forward(
    empty_database: str, tmp_path: Path
) -> None:
    async def at_version_1() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await _migrated_to(conn, 1)
            await conn.execute(
                "INSERT INTO dicom_json_meta (tenant_id, study_uid, series_uid, study_uid_hash,"
                " series_uid_hash, study_date_origin, flag_time)"
                " VALUES ('default', '1.2', '1.2.3', 'h', 'h', '', now())"
            )
        finally:
            await conn.close()

    asyncio.run(at_version_1())
    assert "applied: 0002_metadata, 0003_read_path, 0004_conversion" in migrate(empty_database, tmp_path)
    row = query(empty_database, "SELECT json_status, version, built_version FROM dicom_json_meta")[0]
    assert tuple(row) == (0, 1, None)  # a series flagged before: pending, its metadata to be built


def test_the_change_feed_starts_with_the_instances_indexed_before_it(
    empty_database: str, tmp_path: Path
) -> None:
    async def at_version_5() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await _migrated_to(conn, 5)
            # Indexed in this order, which is not the order of their keys.
            for n, (tenant, sop) in enumerate([("t2", "1.2.3.9"), ("t1", "1.2.3.5"), ("t1", "1.2.3.1")]):
                await conn.execute(
                    "INSERT INTO dicom_instance_meta (tenant_id, study_uid, series_uid, sop_uid,"
                    " sop_class_uid, transfer_syntax_uid, file_path, file_size, received_time,"
                    " indexed_time, trace_id) VALUES ($1, '1.2', '1.2.3', $2, '1.2.840.10008.5.1.4.1.1.2',"
                    " '1.2.840.10008.1.2.1', 'f', 1, now(),"
                    " timestamptz '2026-01-01' + $3 * interval '1 hour', 't')",
                    tenant,
                    sop,
                    n,
                )
        finally:
            await conn.close()

    asyncio.run(at_version_5())
    assert "applied: 0006_change_feed" in migrate(empty_database, tmp_path)
    feed = query(
        empty_database,
        "SELECT tenant_id, sop_uid, action, state, timestamp FROM dicom_change_feed ORDER BY sequence",
    )
    assert [(r["tenant_id"], r["sop_uid"], r["action"], r["state"]) for r in feed] == [
        ("t2", "1.2.3.9", "create", "current"),
        ("t1", "1.2.3.5", "create", "current"),
        ("t1", "1.2.3.1", "create", "current"),
    ]
    first = feed[0]["timestamp"]
    assert [(r["timestamp"] - first).total_seconds() for r in feed] == [0, 3600, 7200]  # when indexed
