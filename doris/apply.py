"""``pacsflow doris apply``: make a Doris FE hold what ``pipeline.models`` describes, changing only
what differs, so that a second run changes nothing.

Three parts: ``read_state`` asks the server (``information_schema`` and ``SHOW ALL ROUTINE LOAD``),
``plan`` decides from that ``State`` value alone (no server: the tests build states), and ``run``
prints and executes the plan.

Doris cannot alter a job's COLUMNS, only some properties of a paused job (ALTER ROUTINE LOAD). So a
job whose columns changed is paused, stopped, and created anew from the offsets the old one reached
(``kafka_partitions``/``kafka_offsets``): nothing is loaded twice or skipped. The offsets are read
again once the job is paused, since a running job moves on meanwhile. Doris takes offsets only with
the partitions named, so the new job reads the partitions the old one did: partitions added to the
topic later are not read by it (a job created afresh reads all of them).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pymysql.connections

from doris import schema
from doris.connection import DorisError, Target, connect, execute, parse_url, rows
from doris.status import Job, current, read_jobs
from pipeline.errors import SettingsError
from pipeline.models import DORIS_TABLES, Column, DorisTable
from pipeline.settings import Settings

DRY_RUN_DATABASE = "pacsflow"
"""The database a dry run without PACSFLOW_DORIS_URL plans for."""
_RUNNING = frozenset({"NEED_SCHEDULE", "RUNNING"})


@dataclasses.dataclass(frozen=True)
class TableColumn:
    """A column as ``information_schema.columns`` describes it."""

    name: str
    data_type: str
    """``DATA_TYPE``, lower case: ``varchar``, ``int``, ..."""
    length: int | None
    nullable: bool


@dataclasses.dataclass(frozen=True)
class State:
    """What the server holds of pacsflow's: the database, its tables' columns, its jobs."""

    database: str
    database_exists: bool
    tables: Mapping[str, tuple[TableColumn, ...]] = dataclasses.field(default_factory=dict)
    jobs: tuple[Job, ...] = ()


@dataclasses.dataclass(frozen=True)
class Step:
    says: str
    statements: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Recreate:
    """A job created from the offsets another reached: the live one it replaces (paused, then
    stopped) or a stopped one (a run cut short between STOP and CREATE leaves one)."""

    says: str
    table: DorisTable
    brokers: str
    old: Job
    carry_offsets: bool
    """False when the old job read another topic: its offsets mean nothing for this one."""

    @property
    def pause(self) -> str | None:
        return f"PAUSE ROUTINE LOAD FOR {self.old.name}" if self.old.state in _RUNNING else None

    def then(self, progress: Mapping[int, str]) -> tuple[str, ...]:
        """Once paused: stop the old job (if live), create the new one from ``progress``."""
        stop = () if self.old.final else (f"STOP ROUTINE LOAD FOR {self.old.name}",)
        offsets = next_offsets(self.old.name, progress) if self.carry_offsets else None
        return (*stop, schema.routine_load(self.table, self.brokers, offsets=offsets))

    @property
    def statements(self) -> tuple[str, ...]:
        """As planned: with the offsets of the state the plan was made from."""
        return (*filter(None, [self.pause]), *self.then(self.old.progress))


Action = Step | Recreate


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...]
    """What differs that apply does not change (it would lose data, or Doris cannot), with the fix."""


def next_offsets(job: str, progress: Mapping[int, str]) -> dict[int, str]:
    """Where a new job starts in each partition: past the last offset ``job`` loaded."""
    offsets = {}
    for partition, shown in progress.items():
        if shown == "OFFSET_ZERO":  # set to start at 0, nothing loaded yet
            offsets[partition] = "0"
        elif shown in ("OFFSET_BEGINNING", "OFFSET_END"):
            offsets[partition] = shown
        elif shown.isdigit():
            offsets[partition] = str(int(shown) + 1)
        else:
            raise DorisError(f"job {job}: partition {partition}'s progress {shown!r} is not an offset")
    return offsets


def _missing_brokers() -> SettingsError:
    return SettingsError(
        "no Kafka brokers for the Routine Load jobs: set PACSFLOW_DORIS_KAFKA_BROKERS to the brokers "
        "as the Doris backends reach them (e.g. kafka:9092), or PACSFLOW_KAFKA_BOOTSTRAP"
    )


def _type_of(column: TableColumn) -> str:
    return f"{column.data_type}({column.length})" if column.length else column.data_type


def _table_plan(state: State, table: DorisTable, notes: list[str]) -> Step | None:
    existing = state.tables.get(table.name) if state.database_exists else None
    if existing is None:
        return Step(f"create table {table.name}", (schema.create_table(table),))
    have = {c.name.lower(): c for c in existing}
    missing = [c for c in table.columns if c.name.lower() not in have]
    for column in (c for c in missing if c.name in table.key):
        notes.append(
            f"table {table.name} lacks the key column {column.name}, which Doris cannot add to a "
            f"{table.model} KEY: re-create the table (its rows are lost) from `pacsflow doris sql`"
        )
    added = [c for c in missing if c.name not in table.key]
    for column in table.columns:
        shown = have.get(column.name.lower())
        if shown is not None:
            _compare_column(table, column, shown, notes)
    extra = [c.name for c in existing if c.name.lower() not in {c.name.lower() for c in table.columns}]
    if extra:
        notes.append(f"table {table.name} has columns no record fills: {', '.join(extra)} (left as they are)")
    if not added:
        return None
    # NULL whatever the record says: the rows already there have no value for them.
    clauses = ", ".join(f"ADD COLUMN {schema.column_definition(c, nullable=True)}" for c in added)
    return Step(
        f"add to table {table.name} the columns {', '.join(c.name for c in added)}",
        (f"ALTER TABLE {table.name} {clauses}",),
    )


def _compare_column(table: DorisTable, column: Column, shown: TableColumn, notes: list[str]) -> None:
    """Notes for a column narrower or stricter than its field: its records would be filtered."""
    problems = []
    wanted = column.type.lower()
    narrower = (
        wanted.startswith("varchar(")
        and shown.data_type == "varchar"
        and shown.length is not None
        and shown.length < int(wanted[len("varchar(") : -1])
    )
    if narrower:
        problems.append(f"is {_type_of(shown).upper()} where the record needs {column.type}")
    if column.nullable and not shown.nullable:
        problems.append("is NOT NULL where the record may hold null")
    if problems:
        loose = schema.column_definition(column, nullable=column.nullable or shown.nullable)
        fix = f"ALTER TABLE {table.name} MODIFY COLUMN {loose}"
        notes.append(
            f"column {table.name}.{column.name} {' and '.join(problems)}: Doris filters such rows as "
            f"errors; apply leaves column types alone, change it with `{fix}`"
        )


def _recreate_reasons(table: DorisTable, job: Job) -> list[str]:
    reasons = []
    if job.table and job.table != table.name:
        reasons.append(f"it loads table {job.table}")
    wanted = tuple(c.name for c in table.loaded)
    if job.columns != wanted:
        lacks = [c for c in wanted if c not in job.columns]
        extra = [c for c in job.columns if c not in wanted]
        what = [f"lacks {', '.join(lacks)}"] if lacks else []
        what += [f"has {', '.join(extra)}"] if extra else []
        reasons.append(f"its columns differ ({'; '.join(what) or 'in order'})")
    merge = "MERGE" if table.merge_deletes else "APPEND"
    if job.properties.get("mergeType", merge).upper() != merge:
        reasons.append(f"it loads in {job.properties['mergeType']} mode, not {merge}")
    if job.properties.get("format", "json").lower() != "json":
        reasons.append(f"it reads {job.properties['format']}, not json")
    if job.topic not in (None, table.topic):
        reasons.append(f"it reads topic {job.topic}")
    return reasons


def _same(name: str, shown: str, wanted: str) -> bool:
    if name == "jsonpaths":
        try:
            return bool(json.loads(shown) == json.loads(wanted))
        except ValueError:
            return False
    return shown.strip().lower() == wanted.lower()


def _alterations(
    table: DorisTable, job: Job, brokers: str | None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The job and Kafka properties that differ, among those ALTER ROUTINE LOAD changes; a
    property the FE does not show (versions differ) is taken as it should be."""
    properties = [
        (name, value)
        for name, value in schema.job_properties(table)
        if name in job.properties and not _same(name, job.properties[name], value)
    ]
    source = []
    if brokers and job.brokers and {b.strip() for b in job.brokers.split(",")} != set(brokers.split(",")):
        source.append(("kafka_broker_list", brokers))
    if job.custom.get("group.id", schema.group_id(table)) != schema.group_id(table):
        source.append(("property.group.id", schema.group_id(table)))
    return properties, source


def _alter(job: str, properties: list[tuple[str, str]], source: list[tuple[str, str]]) -> str:
    parts = [f"ALTER ROUTINE LOAD FOR {job}"]
    if properties:
        parts.append(f"PROPERTIES (\n{schema.property_list(properties)}\n)")
    if source:
        parts.append(f"FROM KAFKA (\n{schema.property_list(source)}\n)")
    return "\n".join(parts)


def _job_plan(state: State, table: DorisTable, brokers: str | None, notes: list[str]) -> Action | None:
    live = current(state.jobs, table.job)
    if live is None:
        if brokers is None:
            raise _missing_brokers()
        named = [j for j in state.jobs if j.name == table.job]
        last = max(named, key=lambda j: j.id, default=None)
        if (
            last is not None
            and last.final  # stopped by someone, or cancelled by Doris (too many error rows, say)
            and last.progress
            and last.topic in (None, table.topic)
        ):
            return Recreate(
                f"create job {table.job}, from where the {last.state.lower()} job {last.id} left off",
                table,
                brokers,
                last,
                carry_offsets=True,
            )
        return Step(
            f"create job {table.job}: topic {table.topic} into table {table.name}, from the beginning",
            (schema.routine_load(table, brokers),),
        )
    reasons = _recreate_reasons(table, live)
    if reasons:
        use = brokers or live.brokers
        if not use:
            raise _missing_brokers()
        carry = live.topic in (None, table.topic)
        return Recreate(
            f"re-create job {table.job} ({'; '.join(reasons)}): pause it, stop it, create it "
            + ("from the offsets it reached" if carry else f"reading topic {table.topic} from the beginning"),
            table,
            use,
            live,
            carry_offsets=carry,
        )
    properties, source = _alterations(table, live, brokers)
    if properties or source:
        running = live.state in _RUNNING
        changed = ", ".join(name for name, _ in properties + source)
        statements = [
            *([f"PAUSE ROUTINE LOAD FOR {table.job}"] if running else []),
            _alter(table.job, properties, source),
            *([f"RESUME ROUTINE LOAD FOR {table.job}"] if running else []),
        ]
        return Step(f"alter job {table.job}: {changed}", tuple(statements))
    if live.state == "PAUSED":
        notes.append(
            f"job {table.job} is PAUSED ({live.reason or 'no reason given'}): once that is fixed, "
            f"`RESUME ROUTINE LOAD FOR {table.job}` (see `pacsflow doris status`)"
        )
    return None


def plan(
    state: State,
    brokers: str | None,
    only: str | None = None,
    tables: Sequence[DorisTable] = DORIS_TABLES,
) -> Plan:
    """What to do, in order: the database, the tables, the jobs. ``only``: "tables" or "jobs"."""
    actions: list[Action] = []
    notes: list[str] = []
    if only != "jobs":
        if not state.database_exists:
            actions.append(
                Step(
                    f"create database {state.database}",
                    (f"CREATE DATABASE IF NOT EXISTS `{state.database}`",),
                )
            )
        actions.extend(filter(None, (_table_plan(state, t, notes) for t in tables)))
    if only != "tables":
        for table in tables:
            if only == "jobs" and (not state.database_exists or table.name not in state.tables):
                raise DorisError(
                    f"table {table.name} does not exist in database {state.database}: run "
                    "`pacsflow doris apply` without --only jobs, which creates it"
                )
            action = _job_plan(state, table, brokers, notes)
            if action is not None:
                actions.append(action)
    return Plan(tuple(actions), tuple(notes))


def schemata_query(database: str) -> str:
    return f"SELECT SCHEMA_NAME FROM information_schema.schemata WHERE SCHEMA_NAME = '{database}'"


def columns_query(database: str) -> str:
    return (
        "SELECT TABLE_NAME AS table_name, COLUMN_NAME AS column_name, DATA_TYPE AS data_type, "
        "CHARACTER_MAXIMUM_LENGTH AS length, IS_NULLABLE AS nullable "
        f"FROM information_schema.columns WHERE TABLE_SCHEMA = '{database}' "
        "ORDER BY TABLE_NAME, ORDINAL_POSITION"
    )


def read_state(conn: pymysql.connections.Connection[Any], target: Target, only: str | None = None) -> State:
    """The server's state; its jobs only when they are to be planned (``only`` is not "tables").
    The database name was checked by ``parse_url``, so it is safe inside the queries."""
    database = target.database
    if not rows(conn, schemata_query(database)):
        return State(database, database_exists=False)
    tables: dict[str, list[TableColumn]] = {}
    for row in rows(conn, columns_query(database)):
        length = row["length"]
        tables.setdefault(str(row["table_name"]), []).append(
            TableColumn(
                name=str(row["column_name"]),
                data_type=str(row["data_type"]).lower(),
                length=int(length) if length is not None else None,
                nullable=str(row["nullable"]).upper() == "YES",
            )
        )
    jobs: list[Job] = []
    if only != "tables":
        conn.select_db(database)
        jobs = read_jobs(conn, target)
    return State(database, True, {k: tuple(v) for k, v in tables.items()}, tuple(jobs))


def _indented(sql: str) -> str:
    return "\n".join(f"    {line}" for line in sql.splitlines())


def carry_out(conn: pymysql.connections.Connection[Any], target: Target, action: Action) -> None:
    if isinstance(action, Step):
        for sql in action.statements:
            execute(conn, sql, target)
        return
    progress = action.old.progress
    if action.pause is not None:
        execute(conn, action.pause, target)
        again = [j for j in read_jobs(conn, target, action.old.name) if j.id == action.old.id]
        if not again:
            raise DorisError(f"job {action.old.name} ({action.old.id}) vanished once paused: run apply again")
        progress = again[0].progress
    for sql in action.then(progress):
        try:
            execute(conn, sql, target)
        except DorisError as exc:
            if sql.startswith("STOP"):
                raise
            raise DorisError(
                f"{exc}. Job {action.old.name} is stopped: the next `pacsflow doris apply` creates it "
                "again from where it stopped"
            ) from None


def _nothing(only: str | None, database: str) -> str:
    what = {
        "tables": f"database {database} and its {len(DORIS_TABLES)} tables",
        "jobs": f"the {len(DORIS_TABLES)} jobs of database {database}",
    }.get(only or "", f"database {database}, its {len(DORIS_TABLES)} tables and jobs")
    return f"nothing to change: {what} are as pipeline/models describes them"


def _print_plan(result: Plan) -> None:
    for note in result.notes:
        print(f"note: {note}")
    for action in result.actions:
        print(f"- would {action.says}")
        for sql in action.statements:
            print(_indented(sql) + ";")


def run(settings: Settings, *, dry_run: bool, only: str | None) -> None:
    """``pacsflow doris apply [--dry-run] [--only tables|jobs]``."""
    brokers = settings.doris_kafka_brokers or settings.kafka_bootstrap or None
    if dry_run and not settings.doris_url:
        print(
            "dry run without a Doris to ask (PACSFLOW_DORIS_URL is empty): the plan for one that has "
            f"nothing of pacsflow's yet, database {DRY_RUN_DATABASE}"
        )
        # With no brokers set either, the jobs keep the files' placeholder: a plan to read, not to run.
        result = plan(State(DRY_RUN_DATABASE, database_exists=False), brokers or schema.PLACEHOLDER, only)
        _print_plan(result)
        print(f"dry run: {len(result.actions)} change(s) planned, none made")
        return
    target = parse_url(settings.doris_url)
    conn = connect(target)
    try:
        state = read_state(conn, target, only)
        result = plan(state, brokers, only)
        print(f"Doris FE {target.where}, database {target.database}" + (": dry run" if dry_run else ""))
        if not result.actions:
            _print_plan(result)
            print(_nothing(only, target.database))
        elif dry_run:
            _print_plan(result)
            print(f"dry run: {len(result.actions)} change(s) planned, none made")
        else:
            for note in result.notes:
                print(f"note: {note}")
            for action in result.actions:
                if state.database_exists or action is not result.actions[0]:
                    # Statements name tables without their database, which exists once the
                    # first step (CREATE DATABASE, when it was missing) has run.
                    conn.select_db(target.database)
                print(f"- {action.says}")
                carry_out(conn, target, action)
            print(f"done: {len(result.actions)} change(s)")
    finally:
        conn.close()
