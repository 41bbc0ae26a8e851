"""Which database errors dead-letter an instance (its values) and which hold the stream (the rest);
a held stream's note for `pacsflow status`."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pipeline.agents.database import DatabaseUnavailable, is_data_error
from pipeline.settings import load
from pipeline.status import HoldNote, held_lines


def server_error(sqlstate: str) -> asyncpg.PostgresError:
    """The exception asyncpg raises when the server reports ``sqlstate``."""
    cls = type(asyncpg.PostgresError).get_message_class_for_sqlstate(sqlstate)
    error = cls(f"an error with SQLSTATE {sqlstate}")
    error.sqlstate = sqlstate  # as asyncpg sets it from the server's message, known class or not
    return error


@pytest.mark.parametrize(
    "sqlstate",
    [
        "22000",  # data exception; also asyncpg's own, for an argument the column type cannot take
        "22001",  # string data right truncation
        "22003",  # numeric value out of range
        "22007",  # invalid datetime format
        "22008",  # datetime field overflow
        "22021",  # character not in repertoire
        "22P02",  # invalid text representation
        "22P05",  # untranslatable character
        "23000",  # integrity constraint violation
        "23502",  # not null violation
        "23503",  # foreign key violation
        "23505",  # unique violation
        "23514",  # check violation
        "22ZZZ",  # one asyncpg has no class for, in the same class
    ],
)
def test_values_the_database_refuses_are_dead_lettered(sqlstate: str) -> None:
    assert is_data_error(server_error(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    [
        "42P01",  # undefined table: not migrated yet
        "42703",  # undefined column: a migration not applied yet
        "42501",  # insufficient privilege: a grant missing
        "25006",  # read-only SQL transaction: a standby, a failover
        "53100",  # disk full
        "53200",  # out of memory
        "53300",  # too many connections
        "57014",  # query canceled: statement timeout
        "57P01",  # admin shutdown
        "57P03",  # cannot connect now: starting up
        "08006",  # connection failure
        "08003",  # connection does not exist
        "40001",  # serialization failure
        "40P01",  # deadlock detected
        "55P03",  # lock not available
        "58030",  # I/O error
        "3D000",  # invalid catalog name: the database not created yet
        "28P01",  # invalid password
        "0A000",  # feature not supported
        "XX000",  # internal error
        "99ZZZ",  # one nobody knows
    ],
)
def test_the_database_state_holds_the_stream(sqlstate: str) -> None:
    assert not is_data_error(server_error(sqlstate))


@pytest.mark.parametrize(
    "error",
    [
        OSError("connection refused"),
        TimeoutError(),
        DatabaseUnavailable("no connection to the database yet"),
        asyncpg.InterfaceError("connection is closed"),
        RuntimeError("not from the database at all"),
    ],
)
def test_errors_without_a_sqlstate_hold_the_stream(error: Exception) -> None:
    assert not is_data_error(error)


def test_a_hold_is_noted_for_status_until_the_stream_flows(tmp_path: Path) -> None:
    settings = load({"PACSFLOW_DATA_DIR": str(tmp_path), "PACSFLOW_NODE_ID": "worker/1"})
    note = HoldNote(settings)
    assert held_lines(settings) == []
    note.held("database", server_error("25006"))
    note.held("database", server_error("42P01"))
    [line] = held_lines(settings)
    assert line.startswith("index held on worker/1 since ")
    assert "waiting for database" in line and line.endswith("(SQLSTATE 42P01)")
    held = note.flowing()
    assert held is not None and held >= 0
    assert held_lines(settings) == []
    assert note.flowing() is None
