from __future__ import annotations

from pathlib import Path

from tests.conftest import query
from tests.support.services import pacsflow


def migrate(dsn: str, tmp_path: Path) -> str:
    result = pacsflow("migrate", env={"PACSFLOW_DATABASE_URL": dsn, "PACSFLOW_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_migrate_applies_everything_to_an_empty_database_once(empty_database: str, tmp_path: Path) -> None:
    assert "applied: 0001_index" in migrate(empty_database, tmp_path)
    assert "up to date" in migrate(empty_database, tmp_path)
    applied = query(empty_database, "SELECT version, name FROM pacsflow_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [(1, "index")]
    tables = {
        r["tablename"]
        for r in query(empty_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"dicom_state_meta", "dicom_json_meta", "dicom_instance_meta"} <= tables
