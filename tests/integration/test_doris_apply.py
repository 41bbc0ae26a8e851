"""`pacsflow doris apply` and `status` against a real MySQL-protocol server (MariaDB), for what
MariaDB and Doris both accept: the connection and its errors, the information_schema reads,
CREATE DATABASE, ALTER TABLE ... ADD COLUMN, and a second run that changes nothing.

MariaDB takes neither Doris's CREATE TABLE (ENGINE=OLAP, KEY after the columns, DISTRIBUTED BY,
PROPERTIES) nor any ROUTINE LOAD statement: the tables are made here from the same generated
statements rendered for MySQL (tests/support/doris.py), and a full apply must stop with a clear
error saying the server is not a Doris FE.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pymysql
import pytest

from doris import schema
from doris.apply import Step, carry_out, plan, read_state
from doris.connection import connect, parse_url
from pipeline.models import DORIS_TABLES
from tests.support.doris import mysql_create_table
from tests.support.services import free_port, pacsflow

LEFT_OUT = {
    "dicom_state_meta": ("series_related_instances",),
    "dicom_object_meta": ("source_ip", "source_ae"),
}
"""Columns the seed's tables lacked or that a record gained since: apply must add them."""


def _admin(url: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )


@pytest.fixture
def doris_database(mysql: str) -> Iterator[tuple[str, str]]:
    """``(PACSFLOW_DORIS_URL, database)`` for a database of the test's own, not created yet;
    dropped afterwards."""
    name = f"pacsflow_test_{uuid.uuid4().hex[:12]}"
    yield f"{mysql}/{name}", name
    conn = _admin(mysql)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def _create_tables(mysql: str, name: str, leave_out: dict[str, tuple[str, ...]]) -> None:
    conn = _admin(mysql)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(f"USE `{name}`")
            for table in DORIS_TABLES:
                cursor.execute(mysql_create_table(table, leave_out.get(table.name, ())))
    finally:
        conn.close()


def _columns(mysql: str, name: str) -> dict[str, list[str]]:
    conn = _admin(mysql)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.columns "
                "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (name,),
            )
            found: dict[str, list[str]] = {}
            for table, column in cursor.fetchall():
                found.setdefault(table, []).append(column)
            return found
    finally:
        conn.close()


def test_apply_adds_the_columns_tables_lack_then_changes_nothing(
    mysql: str, doris_database: tuple[str, str]
) -> None:
    url, name = doris_database
    _create_tables(mysql, name, LEFT_OUT)
    before = _columns(mysql, name)
    env = {"PACSFLOW_DORIS_URL": url}

    dry = pacsflow("doris", "apply", "--only", "tables", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "- would add to table dicom_object_meta the columns source_ip, source_ae" in dry.stdout
    assert (
        "    ALTER TABLE dicom_object_meta ADD COLUMN source_ip VARCHAR(64) NULL, "
        "ADD COLUMN source_ae VARCHAR(64) NULL;" in dry.stdout
    )
    assert _columns(mysql, name) == before

    first = pacsflow("doris", "apply", "--only", "tables", env=env)
    assert first.returncode == 0, first.stderr
    assert "- add to table dicom_state_meta the columns series_related_instances" in first.stdout
    assert "done: 2 change(s)" in first.stdout
    after = _columns(mysql, name)
    for table in DORIS_TABLES:
        left_out = LEFT_OUT.get(table.name, ())
        kept = [c.name for c in table.columns if c.name not in left_out]
        assert after[table.name] == kept + list(left_out), table.name

    second = pacsflow("doris", "apply", "--only", "tables", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to change" in second.stdout
    assert "ALTER" not in second.stdout and "- " not in second.stdout
    assert _columns(mysql, name) == after


def test_the_database_is_created_when_the_server_lacks_it(doris_database: tuple[str, str]) -> None:
    url, name = doris_database
    target = parse_url(url)
    conn = connect(target)
    try:
        state = read_state(conn, target, "tables")
        assert not state.database_exists
        result = plan(state, None, "tables")
        create_database, *tables = result.actions
        assert [a.says for a in tables] == [f"create table {t.name}" for t in DORIS_TABLES]
        assert isinstance(create_database, Step)
        assert create_database.statements == (f"CREATE DATABASE IF NOT EXISTS `{name}`",)
        carry_out(conn, target, create_database)  # Doris's CREATE TABLE is beyond MariaDB

        again = read_state(conn, target, "tables")
        assert again.database_exists and again.tables == {}
        assert [a.says for a in plan(again, None, "tables").actions] == [a.says for a in tables]
    finally:
        conn.close()


def test_a_full_apply_on_a_server_that_is_not_doris_says_so_and_changes_nothing(
    mysql: str, doris_database: tuple[str, str]
) -> None:
    url, name = doris_database
    _create_tables(mysql, name, LEFT_OUT)
    before = _columns(mysql, name)
    env = {"PACSFLOW_DORIS_URL": url, "PACSFLOW_DORIS_KAFKA_BROKERS": "kafka:9092"}

    applied = pacsflow("doris", "apply", env=env)
    assert applied.returncode == 1
    assert "does not understand `SHOW ALL ROUTINE LOAD`" in applied.stderr
    assert "it is not a Doris FE" in applied.stderr and "PACSFLOW_DORIS_URL" in applied.stderr
    assert _columns(mysql, name) == before

    status = pacsflow("doris", "status", env=env)
    assert status.returncode == 1
    assert "it is not a Doris FE" in status.stderr and "PACSFLOW_DORIS_URL" in status.stderr


def test_a_wrong_password_or_an_unreachable_port_names_the_setting(mysql: str) -> None:
    parts = urlsplit(mysql)
    wrong = f"mysql://{parts.username}:not-{parts.password}@{parts.hostname}:{parts.port}/pacsflow"
    refused = pacsflow("doris", "apply", "--only", "tables", env={"PACSFLOW_DORIS_URL": wrong})
    assert refused.returncode == 1
    assert f"refused user '{parts.username}'" in refused.stderr
    assert "fix the user or password in PACSFLOW_DORIS_URL" in refused.stderr

    port = free_port()
    unreachable = pacsflow(
        "doris", "status", env={"PACSFLOW_DORIS_URL": f"mysql://root@127.0.0.1:{port}/pacsflow"}
    )
    assert unreachable.returncode == 1
    assert f"cannot reach the Doris FE at 127.0.0.1:{port}" in unreachable.stderr
    assert "PACSFLOW_DORIS_URL" in unreachable.stderr


def _indented(sql: str) -> str:
    return "\n".join(f"    {line}" for line in sql.splitlines()) + ";"


def test_a_dry_run_without_a_server_prints_the_whole_plan() -> None:
    planned = pacsflow("doris", "apply", "--dry-run", env={"PACSFLOW_DORIS_KAFKA_BROKERS": "kafka:9092"})
    assert planned.returncode == 0, planned.stderr
    assert "PACSFLOW_DORIS_URL is empty" in planned.stdout
    assert "    CREATE DATABASE IF NOT EXISTS `pacsflow`;" in planned.stdout
    for table in DORIS_TABLES:
        assert _indented(schema.create_table(table)) in planned.stdout
        assert _indented(schema.routine_load(table, "kafka:9092")) in planned.stdout

    # Nothing set at all: still a plan to read, the jobs with the files' broker placeholder.
    no_brokers = pacsflow("doris", "apply", "--dry-run", env={})
    assert no_brokers.returncode == 0, no_brokers.stderr
    for table in DORIS_TABLES:
        assert _indented(schema.routine_load(table, schema.PLACEHOLDER)) in no_brokers.stdout

    no_server = pacsflow("doris", "apply", env={"PACSFLOW_DORIS_KAFKA_BROKERS": "kafka:9092"})
    assert no_server.returncode == 1
    assert "PACSFLOW_DORIS_URL is empty" in no_server.stderr
