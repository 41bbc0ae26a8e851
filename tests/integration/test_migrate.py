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
            version, name, sql = migrations()[0]
            await conn.execute(sql)
            await conn.execute(
                "CREATE TABLE pacsflow_migrations (version int PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute(
                "INSERT INTO pacsflow_migrations (version, name) VALUES ($1, $2)", version, name
            )
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
