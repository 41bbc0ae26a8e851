"""What `pacsflow doris apply` decides from a server's state, and what `status` makes of
SHOW ROUTINE LOAD rows. Pure logic: the states are values built here, not a server stand-in; the
statements are checked with sqlglot's Doris dialect (tests/support/doris.py)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from sqlglot import exp

from doris import schema
from doris.apply import (
    Plan,
    Recreate,
    State,
    Step,
    TableColumn,
    columns_query,
    next_offsets,
    plan,
    schemata_query,
)
from doris.status import Job, column_names, job_from_row, report_lines, show_routine_load
from pipeline.errors import PacsflowError, SettingsError
from pipeline.models import DORIS_TABLES, DorisTable
from tests.support.doris import parse_job_command, parse_routine_load, parse_sql

BROKERS = "kafka:9092"
STATE_TABLE = next(t for t in DORIS_TABLES if t.name == "dicom_state_meta")


def as_shown(table: DorisTable, leave_out: tuple[str, ...] = ()) -> tuple[TableColumn, ...]:
    """The table's columns as information_schema.columns describes them."""
    shown = []
    for column in table.columns:
        if column.name in leave_out:
            continue
        kind, _, length = column.type.lower().rstrip(")").partition("(")
        shown.append(TableColumn(column.name, kind, int(length) if length else None, column.nullable))
    return tuple(shown)


def as_running(table: DorisTable, **changes: object) -> Job:
    """The job as SHOW ALL ROUTINE LOAD reports it once `apply` created it."""
    job = Job(
        id=1000 + DORIS_TABLES.index(table),
        name=table.job,
        table=table.name,
        state="RUNNING",
        columns=tuple(c.name for c in table.loaded),
        properties={
            **dict(schema.job_properties(table)),
            "mergeType": "MERGE" if table.merge_deletes else "APPEND",
            "columnToColumnExpr": "...",
        },
        source={"topic": table.topic, "brokerList": BROKERS, "currentKafkaPartitions": "0,1,2"},
        custom={"group.id": schema.group_id(table), "kafka_default_offsets": "OFFSET_BEGINNING"},
        progress={0: "41", 1: "OFFSET_ZERO", 2: "OFFSET_BEGINNING"},
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def up_to_date(**jobs: Job) -> State:
    """A Doris that holds everything: each job RUNNING unless ``jobs`` replaces it (by table)."""
    return State(
        "pacsflow",
        True,
        {t.name: as_shown(t) for t in DORIS_TABLES},
        tuple(jobs.get(t.name, as_running(t)) for t in DORIS_TABLES),
    )


def check(sql: str) -> None:
    """Each statement as far as sqlglot's Doris dialect can take it."""
    if "ROUTINE LOAD" in sql:
        if sql.startswith("CREATE"):
            parse_routine_load(sql)
        else:
            parse_job_command(sql)
    else:
        parsed = parse_sql(sql)
        assert isinstance(parsed, (exp.Create, exp.Alter, exp.Select)), sql


def statements(result: Plan) -> list[str]:
    found = [sql for action in result.actions for sql in action.statements]
    for sql in found:
        check(sql)
    return found


def test_an_empty_doris_gets_the_database_tables_and_jobs() -> None:
    result = plan(State("pacsflow", database_exists=False), BROKERS)
    sql = statements(result)
    assert sql[0] == "CREATE DATABASE IF NOT EXISTS `pacsflow`"
    assert sql[1:6] == [schema.create_table(t) for t in DORIS_TABLES]
    assert sql[6:] == [schema.routine_load(t, BROKERS) for t in DORIS_TABLES]
    assert result.notes == ()


def test_an_up_to_date_doris_gets_nothing() -> None:
    for only in (None, "tables", "jobs"):
        assert plan(up_to_date(), BROKERS, only) == Plan((), ())


def test_only_tables_leaves_the_jobs_alone_and_needs_no_brokers() -> None:
    state = State("pacsflow", True, {t.name: as_shown(t) for t in DORIS_TABLES})
    assert plan(state, None, "tables") == Plan((), ())


def test_a_table_lacking_columns_gets_them_added() -> None:
    state = up_to_date()
    tables = {
        **state.tables,
        STATE_TABLE.name: as_shown(STATE_TABLE, ("series_related_instances", "deleted")),
    }
    result = plan(State("pacsflow", True, tables, state.jobs), BROKERS, "tables")
    (step,) = result.actions
    assert isinstance(step, Step)
    (sql,) = statements(result)
    alter = parse_sql(sql)
    assert isinstance(alter, exp.Alter) and alter.this.name == STATE_TABLE.name
    added = [(a.name, a.args["kind"].sql("doris")) for a in alter.args["actions"]]
    assert added == [("series_related_instances", "INT"), ("deleted", "TINYINT")]
    # NULL: the rows already there have no value for the new columns.
    assert sql.count(" NULL") == 2 and "NOT NULL" not in sql


def test_a_narrower_or_stricter_column_is_a_note_with_its_fix_not_a_change() -> None:
    state = up_to_date()
    object_meta = next(t for t in DORIS_TABLES if t.name == "dicom_object_meta")
    seed = tuple(
        TableColumn("source_ip", "varchar", 24, True)
        if c.name == "source_ip"
        else TableColumn("study_date", "date", None, False)
        if c.name == "study_date"
        else c
        for c in state.tables["dicom_object_meta"]
    )
    result = plan(State("pacsflow", True, {**state.tables, object_meta.name: seed}, state.jobs), BROKERS)
    assert result.actions == ()
    date, ip = result.notes  # in the order of the columns
    assert "source_ip is VARCHAR(24) where the record needs VARCHAR(64)" in ip
    assert "study_date is NOT NULL where the record may hold null" in date
    for note in result.notes:
        check(re.search(r"`(ALTER TABLE [^`]*)`", note).group(1))  # type: ignore[union-attr]


def test_changed_columns_pause_stop_and_recreate_from_the_offsets_reached() -> None:
    old = as_running(
        STATE_TABLE, columns=tuple(c.name for c in STATE_TABLE.loaded if c.name != "series_related_instances")
    )
    result = plan(up_to_date(dicom_state_meta=old), BROKERS)
    (action,) = result.actions
    assert isinstance(action, Recreate) and "lacks series_related_instances" in action.says
    pause, stop, create = statements(result)
    assert parse_job_command(pause) == parse_job_command(f"PAUSE ROUTINE LOAD FOR {STATE_TABLE.job}")
    assert parse_job_command(stop).verb == "STOP" and parse_job_command(stop).job == STATE_TABLE.job
    job = parse_routine_load(create)
    assert job.column_names() == [c.name for c in STATE_TABLE.loaded]
    # Past the last offset loaded; OFFSET_ZERO: set to start at 0 and nothing loaded yet.
    assert job.source_properties["kafka_partitions"] == "0,1,2"
    assert job.source_properties["kafka_offsets"] == "42,0,OFFSET_BEGINNING"
    # Once paused, the run reads the offsets again: the job moved on meanwhile.
    stop_again, create_again = action.then({0: "57", 1: "3", 2: "OFFSET_BEGINNING"})
    assert stop_again == stop
    assert parse_routine_load(create_again).source_properties["kafka_offsets"] == "58,4,OFFSET_BEGINNING"


def test_a_paused_job_with_changed_columns_is_not_paused_again() -> None:
    old = as_running(STATE_TABLE, state="PAUSED", columns=("tenant_id",))
    verbs = [s.split()[0] for s in statements(plan(up_to_date(dicom_state_meta=old), BROKERS))]
    assert verbs == ["STOP", "CREATE"]


def test_a_stopped_job_is_absent_and_created_from_where_it_stopped() -> None:
    stopped = as_running(STATE_TABLE, state="STOPPED", progress={0: "9", 1: "OFFSET_BEGINNING"})
    (create,) = statements(plan(up_to_date(dicom_state_meta=stopped), BROKERS, "jobs"))
    job = parse_routine_load(create)
    assert (job.source_properties["kafka_partitions"], job.source_properties["kafka_offsets"]) == (
        "0,1",
        "10,OFFSET_BEGINNING",
    )


def test_a_cancelled_job_is_absent_and_created_from_where_doris_cancelled_it() -> None:
    # From the beginning, the DUPLICATE tables would hold every record loaded before twice.
    cancelled = as_running(STATE_TABLE, state="CANCELLED")
    (create,) = statements(plan(up_to_date(dicom_state_meta=cancelled), BROKERS, "jobs"))
    job = parse_routine_load(create)
    assert (job.source_properties["kafka_partitions"], job.source_properties["kafka_offsets"]) == (
        "0,1,2",
        "42,0,OFFSET_BEGINNING",
    )


def test_a_job_that_never_loaded_anything_is_created_from_the_beginning() -> None:
    cancelled = as_running(STATE_TABLE, state="CANCELLED", progress={})
    (create,) = statements(plan(up_to_date(dicom_state_meta=cancelled), BROKERS, "jobs"))
    assert create == schema.routine_load(STATE_TABLE, BROKERS)


def test_changed_properties_and_brokers_are_altered_in_a_pause() -> None:
    old = as_running(
        STATE_TABLE,
        properties={**as_running(STATE_TABLE).properties, "max_batch_rows": "200000"},
        source={**as_running(STATE_TABLE).source, "brokerList": "old-kafka:9092"},
    )
    pause, alter, resume = statements(plan(up_to_date(dicom_state_meta=old), BROKERS))
    assert parse_job_command(pause).verb == "PAUSE" and parse_job_command(resume).verb == "RESUME"
    command = parse_job_command(alter)
    assert (command.verb, command.job) == ("ALTER", STATE_TABLE.job)
    assert command.properties == {"max_batch_rows": "300000"}
    assert command.source_properties == {"kafka_broker_list": BROKERS}


def test_jobs_to_create_without_brokers_name_the_setting() -> None:
    with pytest.raises(SettingsError, match="PACSFLOW_DORIS_KAFKA_BROKERS"):
        plan(State("pacsflow", database_exists=False), None)


def test_only_jobs_without_the_tables_says_how_to_create_them() -> None:
    with pytest.raises(PacsflowError, match="without --only jobs"):
        plan(State("pacsflow", database_exists=False), BROKERS, "jobs")


def test_offsets_that_are_not_offsets_are_refused() -> None:
    assert next_offsets("j", {0: "OFFSET_END"}) == {0: "OFFSET_END"}
    with pytest.raises(PacsflowError, match="not an offset"):
        next_offsets("j", {0: "2026-01-01 00:00:00"})


def test_the_reads_parse_too() -> None:
    assert isinstance(parse_sql(schemata_query("pacsflow")), exp.Select)
    assert isinstance(parse_sql(columns_query("pacsflow")), exp.Select)
    assert parse_job_command(show_routine_load()).verb == "SHOW"
    assert parse_job_command(show_routine_load("medical_state_load")).job == "medical_state_load"


# A row of SHOW ALL ROUTINE LOAD as a Doris 2.1 FE prints it (JSON columns are strings).
ROW = {
    "Id": "12045",
    "Name": "medical_state_load",
    "CreateTime": "2026-01-02 03:04:05",
    "DbName": "pacsflow",
    "TableName": "dicom_state_meta",
    "State": "RUNNING",
    "DataSourceType": "KAFKA",
    "JobProperties": json.dumps(
        {
            "columnToColumnExpr": "tenant_id,patient_id,`columns`,deleted,updated_time=now(),"
            "__DORIS_DELETE_SIGN__=deleted = 1",
            "mergeType": "MERGE",
            "max_batch_rows": "300000",
            "jsonpaths": '["$.tenant_id"]',
        }
    ),
    "DataSourceProperties": json.dumps({"topic": "dicom_state_queue", "brokerList": "kafka:9092"}),
    "CustomProperties": json.dumps({"group.id": "pacsflow_doris_medical_state_load"}),
    "Statistic": json.dumps({"loadedRows": 120, "errorRows": 3, "totalRows": 123}),
    "Progress": json.dumps({"0": "41", "1": "OFFSET_ZERO"}),
    "Lag": json.dumps({"0": 5, "1": 2}),
    "ReasonOfStateChanged": "",
    "ErrorLogUrls": "http://be:8040/api/_load_error_log?file=x",
}


def test_a_show_routine_load_row_is_read_as_the_fe_writes_it() -> None:
    job = job_from_row(ROW)
    assert (job.id, job.name, job.table, job.state) == (
        12045,
        "medical_state_load",
        "dicom_state_meta",
        "RUNNING",
    )
    assert job.columns == ("tenant_id", "patient_id", "columns", "deleted", "updated_time")
    assert job.topic == "dicom_state_queue" and job.brokers == "kafka:9092"
    assert job.progress == {0: "41", 1: "OFFSET_ZERO"} and job.lag == {0: 5, 1: 2}
    assert job.custom["group.id"] == "pacsflow_doris_medical_state_load"
    assert column_names("*") == ()
    assert column_names("a,b=concat(x, ',', y),c") == ("a", "b", "c")


def test_status_shows_state_lag_and_error_rows_and_absent_jobs() -> None:
    lines = report_lines([job_from_row(ROW)])
    (state_line,) = [line for line in lines if line.startswith("medical_state_load ")]
    assert state_line.split() == ["medical_state_load", "dicom_state_meta", "RUNNING", "7", "120", "3"]
    assert "medical_state_load: lag by partition 0:5, 1:2" in lines
    assert f"medical_state_load: error rows at {ROW['ErrorLogUrls']}" in lines
    absent = [line for line in lines if "absent" in line]
    assert len(absent) == len(DORIS_TABLES) - 1
