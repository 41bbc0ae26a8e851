"""DuckDB over the sink's Parquet files, with one view per Doris table, named as in Doris.

A view holds the rows Doris would hold (``analytics.layout.current_rows_sql``), so a query written
against the Doris tables runs here unchanged but for dialect. A table the sink has written no file
for yet is a view all the same, with its columns and no rows.

Read-only: only one SELECT (or EXPLAIN) statement is run, as DuckDB's own parser classifies it, and
the connection may open files under ``<data_dir>/analytics`` only, with its configuration locked
before the query runs (no ``SET`` undoes that). The database itself lives in memory and is thrown
away after each query, so nothing done through it lasts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from analytics import layout
from analytics.output import Format, Result, render, result
from pipeline.errors import PacsflowError
from pipeline.models import DORIS_TABLES, DorisTable, TenantId
from pipeline.settings import Settings

_READS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_ATTEMPTS = 3
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALY[SZ]E)?\b", re.IGNORECASE)


class QueryError(PacsflowError):
    """A query that cannot run: refused (not a read) or failed in DuckDB."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _files(data_dir: Path, table: DorisTable) -> str:
    folder = layout.table_dir(data_dir, table)
    return (
        f"read_parquet({_literal(f'{folder}/**/*.parquet')}, hive_partitioning = false, union_by_name = true)"
    )


def _empty(con: duckdb.DuckDBPyConnection, table: DorisTable) -> str:
    """A relation with the file columns, typed as the sink writes them, and no rows."""
    schema = layout.arrow_schema(table)
    types = con.from_arrow(schema.empty_table()).dtypes
    columns = ", ".join(f'CAST(NULL AS {t}) AS "{name}"' for name, t in zip(schema.names, types, strict=True))
    return f"(SELECT {columns} WHERE false)"


def _has_files(data_dir: Path, table: DorisTable) -> bool:
    return next(layout.table_dir(data_dir, table).glob("**/*.parquet"), None) is not None


def connect(data_dir: Path, tenant: str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per Doris table; with ``tenant``, only that tenant's rows."""
    where = f" WHERE tenant_id = {_literal(TenantId(tenant))}" if tenant is not None else ""
    root = layout.root(data_dir)
    con = duckdb.connect(":memory:")
    try:
        for table in DORIS_TABLES:
            source = _files(data_dir, table) if _has_files(data_dir, table) else _empty(con, table)
            rows = layout.current_rows_sql(table, source)
            con.execute(f'CREATE VIEW "{table.name}" AS SELECT * FROM ({rows}){where}')
        # After the views: their files are read when a query runs, and only theirs may be.
        con.execute(f"SET allowed_directories = [{_literal(f'{root}/')}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"{exc}\nhint: {_HINT}") from None
    if len(statements) != 1 or statements[0].type not in _READS:
        kinds = ", ".join(s.type.name for s in statements) or "none"
        raise QueryError(
            f"only a single SELECT (or EXPLAIN) statement is run; this query has {len(statements)}: "
            f"{kinds}. `pacsflow sql` reads the analytics tables, it never changes them"
        )
    if statements[0].type == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement, whatever it is: only a SELECT may follow EXPLAIN.
        explained = _EXPLAIN.sub("", statements[0].query, count=1)
        inner = con.extract_statements(explained)
        if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
            raise QueryError(
                "EXPLAIN [ANALYZE] is run only for a single SELECT. `pacsflow sql` reads the analytics "
                "tables, it never changes them"
            )


_HINT = (
    "DuckDB SQL over views named like the Doris tables: "
    + ", ".join(t.name for t in DORIS_TABLES)
    + ' (their columns: pacsflow sql "DESCRIBE dicom_image_meta")'
)


def execute(data_dir: Path, sql: str, tenant: str | None = None) -> Result:
    """Run one read-only query over the views; QueryError with DuckDB's message if it fails."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with connect(data_dir, tenant) as con:
                _check_read_only(con, sql)
                cursor = con.execute(sql)
                columns = [d[0] for d in cursor.description or []]
                return result(columns, cursor.fetchall())
        except duckdb.IOException as exc:
            # The sink replaces small files by a compacted one: a file listed when the query
            # started can be gone when it is read. A new connection lists the files again.
            if attempt == _ATTEMPTS:
                raise QueryError(f"{exc}\nhint: is {layout.root(data_dir)} readable?") from None
        except duckdb.PermissionException as exc:
            raise QueryError(f"{exc}\nhint: only files under {layout.root(data_dir)} are read") from None
        except duckdb.Error as exc:
            raise QueryError(f"{exc}\nhint: {_HINT}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def note_if_empty(data_dir: Path) -> None:
    """Say on stderr why every table is empty, when none has a file."""
    if not any(_has_files(data_dir, t) for t in DORIS_TABLES):
        print(
            f"pacsflow: no analytics files under {layout.root(data_dir)} yet: the tables are empty. "
            "The sink writes them: `pacsflow dev` runs it (PACSFLOW_ANALYTICS=on), "
            "or run `pacsflow analytics`.",
            file=sys.stderr,
        )


def print_sql(settings: Settings, query: str, fmt: Format) -> None:
    answer = execute(settings.data_dir, query)
    note_if_empty(settings.data_dir)
    print(render(answer, fmt), end="")
