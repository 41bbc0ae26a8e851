from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import query


def test_migrate_is_idempotent_and_says_what_it_did(database: str, tmp_path: Path) -> None:
    fresh = database  # already migrated by the fixture: a second run applies nothing
    env = {**os.environ, "PACSFLOW_DATABASE_URL": fresh, "PACSFLOW_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    applied = query(fresh, "SELECT version, name FROM pacsflow_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [(1, "index")]
    tables = {
        r["tablename"] for r in query(fresh, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"dicom_state_meta", "dicom_json_meta", "dicom_instance_meta"} <= tables


def test_migrate_applies_everything_to_an_empty_database(tmp_path: Path) -> None:
    import asyncio

    import asyncpg

    from tests.conftest import SYSTEM_POSTGRES

    name = f"pacsflow_test_empty_{os.getpid()}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(SYSTEM_POSTGRES)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        dsn = SYSTEM_POSTGRES.rsplit("/", 1)[0] + f"/{name}"
        env = {**os.environ, "PACSFLOW_DATABASE_URL": dsn, "PACSFLOW_DATA_DIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "applied: 0001_index" in result.stdout
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
