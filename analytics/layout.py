"""Where the sink's Parquet files live, their Arrow schema, and which of their rows count.

``<data_dir>/analytics/<table>/day=YYYY-MM-DD/<name>.parquet``, one folder per day of the row's
``created_time``. Each file holds the Doris table's columns (``updated_time`` is set by the sink, as
the Routine Load job sets it with ``NOW()``) and the Kafka position it was read from, ``_partition``
and ``_offset``. ``_offset`` is the Kafka offset plus the partition's base, which only grows: the
embedded broker forgets its topics when it restarts and numbers records from 0 again, so the sink
starts a partition it has no committed offset for after every position already stored (see
``analytics.sink``). A file is written under a ``.tmp`` name, fsynced and renamed: a reader (and a
glob) sees whole files only. Compaction replaces a day's small files by the rows
``compacted_rows_sql`` keeps of them.

Rows are not unique on disk: a sink killed after writing a file and before committing its offsets
writes those records again. ``current_rows_sql`` is the one rule that removes what Doris would not
hold: for a UNIQUE table, all but its key's last record (records of a key share a partition, so
the highest offset is the last), and a key whose last record deleted it; for a DUPLICATE table, a
second copy of the same Kafka record.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.models import DORIS_TABLES, DorisTable

POSITION = ("_partition", "_offset")
DAY = "day"

_ARROW = {
    "INT": pa.int32(),
    "BIGINT": pa.int64(),
    "TINYINT": pa.int8(),
    "DOUBLE": pa.float64(),
    "DATE": pa.date32(),
    "DATETIME": pa.timestamp("us"),
}


def root(data_dir: Path) -> Path:
    return data_dir / "analytics"


def table_dir(data_dir: Path, table: DorisTable) -> Path:
    return root(data_dir) / table.name


def table(name: str) -> DorisTable:
    for t in DORIS_TABLES:
        if t.name == name:
            return t
    raise KeyError(f"no Doris table {name!r}: one of {', '.join(t.name for t in DORIS_TABLES)}")


def arrow_schema(table: DorisTable) -> pa.Schema:
    """The table's columns as Arrow types (VARCHAR as string), then the Kafka position."""
    fields = [pa.field(c.name, _ARROW.get(c.kind, pa.string()), nullable=c.nullable) for c in table.columns]
    fields += [
        pa.field("_partition", pa.int32(), nullable=False),
        pa.field("_offset", pa.int64(), nullable=False),
    ]
    return pa.schema(fields)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _last_records_sql(table: DorisTable, source: str) -> str:
    """Every file column of the rows of ``source`` that Doris could hold: for a UNIQUE table the
    last record of each key, deleting ones included; for a DUPLICATE table one copy of each Kafka
    record."""
    if table.model == "UNIQUE":
        key = ", ".join(_quoted(k) for k in table.key)
        last = f"row_number() OVER (PARTITION BY {key} ORDER BY _partition DESC, _offset DESC) = 1"
        return f"SELECT * FROM {source} QUALIFY {last}"
    once = "row_number() OVER (PARTITION BY _partition, _offset) = 1"
    return f"SELECT * FROM {source} QUALIFY {once}"


def current_rows_sql(table: DorisTable, source: str) -> str:
    """DuckDB SQL selecting the rows Doris would hold from ``source`` (a relation with the file
    columns), with the table's columns only."""
    columns = ", ".join(_quoted(c.name) for c in table.columns)
    alive = " WHERE coalesce(deleted, 0) = 0" if table.model == "UNIQUE" and table.merge_deletes else ""
    return f"SELECT {columns} FROM ({_last_records_sql(table, source)}){alive}"


def compacted_rows_sql(table: DorisTable, source: str) -> str:
    """DuckDB SQL selecting, with every file column, the rows of ``source`` (any set of the
    table's files) that compaction keeps: replacing the set by them changes no answer of
    ``current_rows_sql`` over all the files. The same rule less the last step: a key's deleting
    record is kept, since a file outside the set may hold an older record of that key, which it
    must go on hiding."""
    columns = ", ".join(_quoted(f.name) for f in arrow_schema(table))
    return f"SELECT {columns} FROM ({_last_records_sql(table, source)})"
