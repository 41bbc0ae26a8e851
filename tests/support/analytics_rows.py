"""Analytics rows as the sink leaves them: records of pacsflow's own, as Parquet files in
``analytics.layout``, each with the Kafka position it was read from.

``stored_and_indexed`` makes an instance's records with the product's pure functions (the SCP's
``events_for``, the index agent's ``index_instance``), from a dataset of ``dicomdata``; ``Rows``
gives each record a position on its topic's partition (records of one key share a partition, as
on the broker) and writes them out, one file per table and day, as the sink does.
"""

from __future__ import annotations

import io
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydicom import dcmread
from pydicom.dataset import Dataset

from analytics import layout
from pipeline import metadata
from pipeline.dicomfile import read_header
from pipeline.indexing import IndexedInstance, index_instance
from pipeline.ingest import Source, StoredInstance, events_for, locate
from pipeline.models import (
    DORIS_TABLES,
    DicomObjectMeta,
    DorisTable,
    StorageEvent,
    TenantId,
    WadoAccessLog,
)
from pipeline.models.record import Record
from tests.support import dicomdata

PARTITIONS = 4
DATETIME = "%Y-%m-%d %H:%M:%S"


def table_of(record: Record) -> DorisTable:
    return next(t for t in DORIS_TABLES if isinstance(record, t.record))


def partition_of(record: Record) -> int:
    # The SCP, the index and the conversion agent key by study; the web server by tenant.
    key = record.tenant_id if isinstance(record, WadoAccessLog) else record.study_uid  # type: ignore[attr-defined]
    return zlib.crc32(str(key).encode()) % PARTITIONS


def _value(column_type: str, value: Any) -> Any:
    if value is None:
        return None
    if column_type.startswith("DATETIME"):
        return datetime.fromisoformat(value)
    if column_type == "DATE":
        return date.fromisoformat(value)
    return value


@dataclass(frozen=True)
class Row:
    record: Record
    partition: int
    offset: int


class Rows:
    """Records with their positions, waiting to be written as Parquet."""

    def __init__(self) -> None:
        self._offsets: Counter[tuple[str, int]] = Counter()
        self._pending: list[Row] = []
        self.all: list[Row] = []
        """Every row added, copies written again included, in order."""
        self.files = 0

    def add(self, record: Record) -> Row:
        table, partition = table_of(record), partition_of(record)
        offset = self._offsets[table.name, partition]
        self._offsets[table.name, partition] += 1
        row = Row(record, partition, offset)
        self._pending.append(row)
        self.all.append(row)
        return row

    def again(self, row: Row) -> None:
        """The same record at the same position once more: a sink that wrote a file and was stopped
        before it committed the offsets reads and writes it again."""
        self._pending.append(row)
        self.all.append(row)

    def write(self, data_dir: Path, rows_per_file: int = 50_000) -> None:
        """What was added since the last write, as files per table and day of ``created_time``."""
        groups: dict[tuple[str, str], list[Row]] = {}
        for row in self._pending:
            day = str(row.record.created_time)[:10]  # type: ignore[attr-defined]
            groups.setdefault((table_of(row.record).name, day), []).append(row)
        self._pending = []
        for (name, day), rows in groups.items():
            table = layout.table(name)
            folder = layout.table_dir(data_dir, table) / f"{layout.DAY}={day}"
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(rows), rows_per_file):
                chunk = rows[start : start + rows_per_file]
                pq.write_table(_arrow(table, chunk), folder / f"{uuid.uuid4().hex}.parquet")
                self.files += 1


def _arrow(table: DorisTable, rows: list[Row]) -> pa.Table:
    types = {c.name: c.type for c in table.columns}
    columns: dict[str, list[Any]] = {name: [] for name in layout.arrow_schema(table).names}
    for row in rows:
        fields = msgspec.structs.asdict(row.record)
        # The load job's NOW(): the sink writes when it read the record.
        fields.setdefault("updated_time", fields["created_time"])
        for name in types:
            columns[name].append(_value(types[name], fields[name]))
        columns["_partition"].append(row.partition)
        columns["_offset"].append(row.offset)
    return pa.table(columns, schema=layout.arrow_schema(table))


def stored_and_indexed(
    ds: Dataset,
    tenant: str,
    received: datetime,
    indexed: datetime,
    *,
    ae_title: str = "MODALITY",
    node_id: str = "test-node",
) -> tuple[DicomObjectMeta, IndexedInstance]:
    """The SCP's ``log_queue`` record of ``ds`` received at ``received``, and what the index agent
    makes of it at ``indexed`` (its ``dicom_image_queue`` record and series row)."""
    encoded = dicomdata.encode(ds)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    header = read_header(encoded[dicomdata.dataset_offset(encoded) :], syntax)
    source = Source(TenantId(tenant), ae_title, "192.0.2.10", str(uuid.uuid4()))
    stored = StoredInstance(locate(header, TenantId(tenant)), header, syntax, len(encoded), received, source)
    storage, log = events_for(stored, node_id)
    event = StorageEvent.loads(storage.value)
    full = dcmread(io.BytesIO(encoded), defer_size=metadata.deferred_size(1024))
    return DicomObjectMeta.loads(log.value), index_instance(event, full, indexed)
