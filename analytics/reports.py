"""The analysts' reports: Doris SQL files in ``doris.queries``, run here on DuckDB through sqlglot.

A report is written once, in the SQL an analyst runs on Doris; ``duckdb_sql`` transpiles it with
sqlglot (Doris to DuckDB) and fixes what sqlglot leaves as it is and DuckDB lacks (``_DUCKDB``).
Each file starts with ``-- key: value`` lines: ``title``, ``description``, ``chart`` (bar, line
or table), ``x`` and ``y`` (columns of the answer; ``y`` may list several, comma-separated).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
from importlib import resources
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from analytics.output import Format, Result, render, result
from analytics.query import execute, note_if_empty
from pipeline.errors import PacsflowError
from pipeline.settings import Settings

__all__ = ["Report", "Result", "catalogue", "duckdb_sql", "print_report", "run"]

PACKAGE = "doris.queries"
CHARTS = ("bar", "line", "table")
_HEADER = re.compile(r"--\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_KEYS = ("title", "description", "chart", "x", "y")


class UnknownReport(PacsflowError):
    """No report of that name."""


class BadReport(PacsflowError):
    """A report file without its header, or whose SQL does not parse as Doris SQL."""


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    """The file's stem: ``pacsflow report NAME``."""
    title: str
    description: str
    chart: str
    """How the web page draws it: ``bar``, ``line`` or ``table``."""
    x: str
    y: tuple[str, ...]
    sql: str
    """As written, in Doris SQL."""


def _parse(name: str, text: str) -> Report:
    header: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _HEADER.match(line)
        if match is None:
            break
        header[match.group(1)] = match.group(2)
    missing = [k for k in _KEYS if not header.get(k)]
    if missing:
        raise BadReport(
            f"{PACKAGE}/{name}.sql lacks its header lines: {', '.join(f'-- {k}: ...' for k in missing)}"
        )
    if header["chart"] not in CHARTS:
        raise BadReport(f"{PACKAGE}/{name}.sql: chart {header['chart']!r} is not one of {', '.join(CHARTS)}")
    y = tuple(part.strip() for part in header["y"].split(",") if part.strip())
    return Report(name, header["title"], header["description"], header["chart"], header["x"], y, text)


@functools.cache
def _reports() -> tuple[Report, ...]:
    files = sorted(
        (f for f in resources.files(PACKAGE).iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    return tuple(_parse(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files)


def catalogue() -> list[Report]:
    """Every report, by name."""
    return list(_reports())


# Doris aggregates sqlglot passes through by name, and DuckDB's equivalents. Doris's PERCENTILE is
# exact with linear interpolation between the closest ranks (Hive's): DuckDB's QUANTILE_CONT.
# PERCENTILE_APPROX is a t-digest in both; DuckDB's takes no compression argument.
_DUCKDB = {"PERCENTILE": ("QUANTILE_CONT", 2), "PERCENTILE_APPROX": ("APPROX_QUANTILE", 2)}


def _for_duckdb(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Anonymous) and str(node.name).upper() in _DUCKDB:
        name, arity = _DUCKDB[str(node.name).upper()]
        return exp.Anonymous(this=name, expressions=[e.copy() for e in node.expressions[:arity]])
    return node


def duckdb_sql(doris: str, where: str = "a report") -> str:
    """``doris`` (one Doris statement) as DuckDB SQL."""
    try:
        statements = [s for s in sqlglot.parse(doris, read="doris") if s is not None]
    except sqlglot.ParseError as exc:
        raise BadReport(f"{where} is not Doris SQL: {exc}") from None
    if len(statements) != 1:
        raise BadReport(f"{where} holds {len(statements)} statements, not one")
    tree = statements[0].transform(_for_duckdb)
    try:
        return tree.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE, comments=False)
    except sqlglot.UnsupportedError as exc:
        raise BadReport(f"{where} cannot be run on DuckDB: {exc}") from None


def find(name: str) -> Report:
    for report in catalogue():
        if report.name == name:
            return report
    raise UnknownReport(f"no report {name!r}: one of {', '.join(r.name for r in catalogue())}")


def run(data_dir: Path, name: str, tenant: str | None = None) -> Result:
    """Report ``name`` over the analytics tables (one tenant's rows only, with ``tenant``)."""
    report = find(name)
    return execute(data_dir, duckdb_sql(report.sql, f"{PACKAGE}/{name}.sql"), tenant)


def print_report(settings: Settings, name: str | None, fmt: Format) -> None:
    if name is None:
        listing = result(["name", "title"], [[r.name, r.title] for r in catalogue()])
        print(render(listing, fmt), end="")
        if fmt == "table":
            print("run one: pacsflow report NAME [--format table|csv|json]", file=sys.stderr)
        return
    answer = run(settings.data_dir, name)
    note_if_empty(settings.data_dir)
    print(render(answer, fmt), end="")
