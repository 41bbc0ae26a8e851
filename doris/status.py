"""The Routine Load jobs as Doris reports them (``SHOW ALL ROUTINE LOAD``), and ``pacsflow doris status``.

A row's JSON columns are read as the FE writes them: ``JobProperties`` (its ``columnToColumnExpr``
is the job's COLUMNS), ``DataSourceProperties`` (topic, brokers), ``CustomProperties`` (the
``property.*`` Kafka settings, prefix removed), ``Progress`` (per partition, the last offset loaded,
or ``OFFSET_BEGINNING``/``OFFSET_END``/``OFFSET_ZERO`` before the first), ``Lag`` (per partition,
messages not loaded yet) and ``Statistic`` (``loadedRows``, ``errorRows``, ...).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pymysql.connections
import pymysql.err

from doris.connection import DEFAULT_PORT, DorisError, Target, connect, error_parts, parse_url, rows
from pipeline.models import DORIS_TABLES
from pipeline.settings import Settings

FINAL_STATES = frozenset({"STOPPED", "CANCELLED"})
"""States a job never leaves: it loads nothing more, and its name is free for a new job."""
_SYNTAX_ERROR = 1064


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of ``SHOW ALL ROUTINE LOAD``."""

    id: int
    name: str
    table: str
    state: str
    columns: tuple[str, ...]
    """The names of its COLUMNS, computed ones included, lower case."""
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    custom: Mapping[str, str] = dataclasses.field(default_factory=dict)
    progress: Mapping[int, str] = dataclasses.field(default_factory=dict)
    lag: Mapping[int, int] = dataclasses.field(default_factory=dict)
    statistic: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""
    error_log_urls: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def topic(self) -> str | None:
        return self.source.get("topic")

    @property
    def brokers(self) -> str | None:
        return self.source.get("brokerList")


def _json(value: object) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    try:
        loaded = json.loads(str(value))
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def column_names(expression: str) -> tuple[str, ...]:
    """The names in a job's column list as the FE shows it (``a,b,updated_time=now()``); ``*`` is
    none. Doris's hidden columns (``__DORIS_DELETE_SIGN__``) are its own, not the job's."""
    if expression.strip() in ("", "*"):
        return ()
    items, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(expression):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(expression[start:index])
            start = index + 1
    items.append(expression[start:])
    names = (item.split("=", 1)[0].strip().strip("`").lower() for item in items)
    return tuple(name for name in names if name and not name.startswith("__doris_"))


def job_from_row(row: Mapping[str, Any]) -> Job:
    properties = _json(row.get("JobProperties"))
    columns = row.get("Columns") or properties.get("columnToColumnExpr") or ""
    return Job(
        id=int(row.get("Id") or 0),
        name=str(row.get("Name") or ""),
        table=str(row.get("TableName") or ""),
        state=str(row.get("State") or "").upper(),
        columns=column_names(str(columns)),
        properties={k: str(v) for k, v in properties.items()},
        source={k: str(v) for k, v in _json(row.get("DataSourceProperties")).items()},
        custom={k: str(v) for k, v in _json(row.get("CustomProperties")).items()},
        progress={int(k): str(v) for k, v in _json(row.get("Progress")).items() if str(k).isdigit()},
        lag={int(k): _int(v) for k, v in _json(row.get("Lag")).items() if str(k).isdigit()},
        statistic=_json(row.get("Statistic")),
        reason=str(row.get("ReasonOfStateChanged") or ""),
        error_log_urls=str(row.get("ErrorLogUrls") or ""),
    )


def show_routine_load(job: str | None = None) -> str:
    """Every job of the current database, stopped and cancelled ones too (``ALL``)."""
    return "SHOW ALL ROUTINE LOAD" + (f" FOR {job}" if job else "")


def read_jobs(conn: pymysql.connections.Connection[Any], target: Target, job: str | None = None) -> list[Job]:
    """The jobs of the connection's database (or those named ``job``)."""
    sql = show_routine_load(job)
    try:
        return [job_from_row(row) for row in rows(conn, sql)]
    except pymysql.err.MySQLError as exc:
        code, message = error_parts(exc)
        if code == _SYNTAX_ERROR:
            raise DorisError(
                f"the server at {target.where} does not understand `{sql}` ({message}): it is not a "
                f"Doris FE. Point PACSFLOW_DORIS_URL at the Doris FE's MySQL port ({DEFAULT_PORT} by default)"
            ) from None
        raise DorisError(
            f"the Doris FE at {target.where} refused `{sql}`: {message} (error {code})"
        ) from None


def current(jobs: list[Job] | tuple[Job, ...], name: str) -> Job | None:
    """The job of that name that is not stopped or cancelled (Doris allows one at a time)."""
    return next((j for j in jobs if j.name == name and not j.final), None)


def _partitions(values: Mapping[int, object]) -> str:
    return ", ".join(f"{p}:{values[p]}" for p in sorted(values))


def report_lines(jobs: list[Job] | tuple[Job, ...]) -> list[str]:
    """One line per pacsflow job (state, lag, rows loaded and filtered), then what needs a look."""
    lines = [f"{'job':<26}{'table':<20}{'state':<15}{'lag':>8}{'loaded':>12}{'error rows':>12}"]
    details: list[str] = []
    for table in DORIS_TABLES:
        job = current(jobs, table.job)
        if job is None:
            lines.append(f"{table.job:<26}{table.name:<20}absent: `pacsflow doris apply` creates it")
            continue
        lag = sum(job.lag.values())
        loaded = job.statistic.get("loadedRows", "-")
        errors = job.statistic.get("errorRows", "-")
        lines.append(f"{job.name:<26}{job.table:<20}{job.state:<15}{lag:>8}{loaded!s:>12}{errors!s:>12}")
        if job.lag and lag:
            details.append(f"{job.name}: lag by partition {_partitions(job.lag)}")
        if job.reason:
            details.append(f"{job.name}: {job.state.lower()} because {job.reason}")
        if job.error_log_urls and str(errors) not in ("0", "-"):
            details.append(f"{job.name}: error rows at {job.error_log_urls}")
    others = sorted({j.name for j in jobs if not j.final} - {t.job for t in DORIS_TABLES})
    if others:
        details.append(f"other jobs in this database: {', '.join(others)}")
    return lines + details


def report(settings: Settings) -> list[str]:
    """``pacsflow doris status``: the jobs of the database ``PACSFLOW_DORIS_URL`` names."""
    target = parse_url(settings.doris_url)
    conn = connect(target, database=True)
    try:
        jobs = read_jobs(conn, target)
    finally:
        conn.close()
    return [f"Doris FE {target.where}, database {target.database}", *report_lines(jobs)]
