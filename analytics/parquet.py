"""The analytics tables' files: one batch written durably, a day's small files merged into one.

Durable means written under a ``.tmp`` name, fsynced, renamed and the folder fsynced: after a
crash a file is there whole or not at all. A ``.tmp`` left by a crash holds rows whose offsets were
never committed, so the sink reads them again; it deletes the leftovers when it starts.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from analytics import layout
from pipeline.models import DorisTable
from pipeline.stores.files import fsync_dir, make_dirs

SUFFIX = ".parquet"
PARTIAL = ".parquet.tmp"
SMALL_BYTES = 128 << 20
"""Files above this size are left alone by compaction: merging them again and again would rewrite
a busy day's data for every few new rows."""
COMPACT_AFTER = 16
"""A day folder holding more small files than this is compacted."""

# The sink's writes never touch a file compaction reads, but working out where a partition's
# positions end (``max_offsets``) must not list a file that compaction is about to remove.
FILES_LOCK = threading.Lock()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(partial: Path, final: Path) -> None:
    _fsync_file(partial)
    partial.rename(final)
    fsync_dir(final.parent)


def _name(kind: str) -> str:
    # Sorts by time when listed; the random part keeps two writers (a killed sink's successor
    # started within the same nanosecond clock tick, say) apart.
    return f"{kind}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def day_dir(data_dir: Path, table: DorisTable, day: str) -> Path:
    return layout.table_dir(data_dir, table) / f"{layout.DAY}={day}"


def write_batch(folder: Path, rows: pa.Table) -> Path:
    """Write ``rows`` as a new file of ``folder``, durably; return its path."""
    make_dirs(folder)
    name = _name("batch")
    partial, final = folder / f"{name}{PARTIAL}", folder / f"{name}{SUFFIX}"
    try:
        with partial.open("wb") as out:
            pq.write_table(rows, out, compression="zstd")
            out.flush()
            os.fsync(out.fileno())
        partial.rename(final)
        fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final


def remove_partial(root: Path) -> list[Path]:
    """Delete the ``.tmp`` files a crash left under ``root``; return them."""
    leftovers = sorted(root.glob(f"*/*/*{PARTIAL}")) if root.exists() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def small_files(folder: Path) -> list[Path]:
    """The day folder's files that compaction may merge."""
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        with contextlib.suppress(FileNotFoundError):  # compacted away meanwhile
            if path.stat().st_size < SMALL_BYTES:
                found.append(path)
    return found


def day_dirs(data_dir: Path, table: DorisTable) -> list[Path]:
    folder = layout.table_dir(data_dir, table)
    return sorted(p for p in folder.glob(f"{layout.DAY}=*") if p.is_dir())


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _files_sql(files: list[Path]) -> str:
    paths = ", ".join(_literal(str(p)) for p in files)
    return f"read_parquet([{paths}], hive_partitioning = false, union_by_name = true)"


def _connect() -> duckdb.DuckDBPyConnection:
    # One thread: compaction runs beside the sink's own work on a machine it shares.
    return duckdb.connect(":memory:", config={"threads": 1})


@dataclass(frozen=True)
class Compacted:
    path: Path
    files: int
    rows_in: int
    rows_out: int


def compact(table: DorisTable, files: list[Path]) -> Compacted:
    """Merge ``files`` (of one day folder) into one, keeping the rows
    ``layout.compacted_rows_sql`` keeps, then delete them.

    A crash after the merged file is renamed in and before the inputs are all deleted leaves the
    same rows twice, with the same positions: ``layout.current_rows_sql`` counts them once, and
    the next compaction of the folder merges them away.
    """
    folder = files[0].parent
    name = _name("compacted")
    partial, final = folder / f"{name}{PARTIAL}", folder / f"{name}{SUFFIX}"
    source = _files_sql(files)
    try:
        with _connect() as con:
            (rows_in,) = con.execute(f"SELECT count(*) FROM {source}").fetchone() or (0,)
            kept = layout.compacted_rows_sql(table, source)
            con.execute(f"COPY ({kept}) TO {_literal(str(partial))} (FORMAT parquet, COMPRESSION zstd)")
            (rows_out,) = con.execute(
                f"SELECT count(*) FROM read_parquet({_literal(str(partial))})"
            ).fetchone() or (0,)
        with FILES_LOCK:
            _publish(partial, final)
            for path in files:
                path.unlink(missing_ok=True)
            fsync_dir(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return Compacted(final, len(files), int(rows_in), int(rows_out))


def max_offsets(data_dir: Path, table: DorisTable) -> dict[int, int]:
    """The highest ``_offset`` stored for each partition of ``table``."""
    with FILES_LOCK:
        files = [f for day in day_dirs(data_dir, table) for f in sorted(day.glob(f"*{SUFFIX}"))]
        if not files:
            return {}
        with _connect() as con:
            found = con.execute(
                f"SELECT _partition, max(_offset) FROM {_files_sql(files)} GROUP BY _partition"
            ).fetchall()
    return {int(partition): int(offset) for partition, offset in found}


def write_json(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text``, durably and whole."""
    make_dirs(path.parent)
    partial = path.with_name(f"{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    _publish(partial, path)
