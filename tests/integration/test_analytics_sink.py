"""`pacsflow analytics` against a real broker: every record lands once, in its table's columns,
whatever kills the sink, restarts the broker or gets published by mistake.

The broker is shared by the session and the sink's group name is fixed, so each test's records
carry a tenant of their own, filed under a day of their own, and are looked for by both; each
test's sink writes to a data folder of its own.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from analytics import layout, parquet
from analytics.sink import Columns
from analytics.sink import Table as SinkTable
from pipeline import topics
from pipeline.models import DORIS_TABLES, DicomImageMeta, DicomObjectMeta, DicomStateMeta, DorisTable
from pipeline.models.columns import record_columns
from pipeline.models.record import Record
from tests.support.services import Broker, Service, pacsflow, wait_for

pytestmark = [pytest.mark.broker]


# -- records built from the model classes ------------------------------------------------------


def sample(record: type[Record], n: int, tenant: str, day: str, **fields: object) -> Record:
    """Record number ``n`` of ``record``'s class, every field filled from its Doris type: keys
    (``*_uid``, ``patient_id``) distinct for each ``n``, the dates and times on ``day``."""
    values: dict[str, object] = {}
    for column in record_columns(record):
        kind = column.kind
        if column.name == "tenant_id":
            value: object = tenant
        elif kind == "DATE":
            value = day
        elif kind == "DATETIME":
            value = f"{day} {n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}"
        elif kind == "BIGINT":
            value = 2**40 + n
        elif kind == "INT":
            value = n
        elif kind == "TINYINT":
            value = 0
        elif kind == "DOUBLE":
            value = n + 0.25
        else:
            width = int(column.type.removeprefix("VARCHAR(").removesuffix(")"))
            value = f"{column.name}-{n}"[-width:]
        values[column.name] = value
    values.update(fields)
    return record(**values)


Message = tuple[str, bytes | None, bytes]


def message(table: DorisTable, record: Record) -> Message:
    """As the services publish it: keyed by study, so a study's records share a partition."""
    study = getattr(record, "study_uid")  # noqa: B009  # every Doris-bound record has one; Record does not
    return table.topic, record.dumps(), topics.study_key(study)


async def publish(bootstrap: str, messages: list[Message]) -> list[RecordMetadata]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key) for topic, value, key in messages]
        return list(await asyncio.gather(*sent))
    finally:
        await producer.stop()


TABLES = {t.name: t for t in DORIS_TABLES}
OBJECTS, STATES, IMAGES = TABLES["dicom_object_meta"], TABLES["dicom_state_meta"], TABLES["dicom_image_meta"]


# -- the sink and its files --------------------------------------------------------------------


class Sink:
    """`pacsflow analytics` processes writing to one data folder, started one after the other."""

    def __init__(self, folder: Path, bootstrap: str, **env: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder / "var"
        self.env = {
            "PACSFLOW_DATA_DIR": str(self.data_dir),
            "PACSFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "PACSFLOW_KAFKA_REQUEST_TIMEOUT_S": "3",
            "PACSFLOW_ANALYTICS_ROLL_S": "0.3",
            **{f"PACSFLOW_{k.upper()}": v for k, v in env.items()},
        }
        self.runs: list[Service] = []

    @property
    def service(self) -> Service:
        return self.runs[-1]

    def start(self) -> Service:
        service = Service("analytics", self.env, self.folder / f"sink{len(self.runs)}.log").start()
        self.runs.append(service)
        wait_for(
            lambda: service.events("analytics_ready") or not service.alive(),
            60,
            "the sink to be given its partitions",
        )
        assert service.alive(), service.log_path.read_text()[-3000:]
        return service

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for run in self.runs for e in run.events(name)]

    def files(self, table: DorisTable, day: str) -> list[Path]:
        return sorted(parquet.day_dir(self.data_dir, table, day).glob("*.parquet"))

    def rows(self, table: DorisTable, tenant: str) -> list[dict[str, Any]]:
        """The tenant's rows as the views show them (``layout.current_rows_sql``)."""
        source = self._files(table)
        if source is None:
            return []
        rows = layout.current_rows_sql(table, source)
        return _query(f"SELECT * FROM ({rows}) WHERE tenant_id = ?", tenant)  # noqa: S608  # our own SQL

    def stored(self, table: DorisTable, tenant: str) -> list[dict[str, Any]]:
        """The tenant's rows as they are on disk, copies included, with their positions."""
        source = self._files(table)
        if source is None:
            return []
        return _query(f"SELECT * FROM {source} WHERE tenant_id = ?", tenant)  # noqa: S608  # our own SQL

    def _files(self, table: DorisTable) -> str | None:
        folder = layout.table_dir(self.data_dir, table)
        if not any(folder.glob("*/*.parquet")):
            return None
        return f"read_parquet('{folder}/*/*.parquet', hive_partitioning = false)"

    def stop(self) -> None:
        for run in self.runs:
            run.stop()


def _query(sql: str, *params: object) -> list[dict[str, Any]]:
    with duckdb.connect(":memory:") as con:
        cursor = con.execute(sql, list(params))
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[list[Sink]]:
    made: list[Sink] = []
    yield made
    for sink in made:
        sink.stop()


def new_sink(sinks: list[Sink], folder: Path, bootstrap: str, **env: str) -> Sink:
    sink = Sink(folder, bootstrap, **env)
    sinks.append(sink)
    return sink


@pytest.fixture
def tenant() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def day() -> str:
    """A day no other test files rows under: a folder of this test's own."""
    return (date(1990, 1, 1) + timedelta(days=random.randrange(12000))).isoformat()


def _expected(table: DorisTable, record: Record) -> dict[str, object]:
    row: dict[str, object] = {}
    for column in table.loaded:
        if column.expression is not None:
            continue
        value = getattr(record, column.name)
        if value is not None and column.kind == "DATE":
            value = date.fromisoformat(value)
        elif value is not None and column.kind == "DATETIME":
            value = datetime.fromisoformat(value)
        row[column.name] = value
    return row


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dicom_image_meta", "dicom_object_meta"])
def test_compacting_any_of_a_days_files_changes_nothing_the_views_show(name: str, tmp_path: Path) -> None:
    """Compaction merges some of a table's files (the small ones of one day), while a key's other
    records may be in files it leaves alone: whatever it merges, the views show the same rows."""
    table = TABLES[name]
    converter = SinkTable(table)
    now = datetime(2024, 1, 1)
    for seed in range(12):
        chance = random.Random(seed)
        data_dir = tmp_path / f"seed{seed}"
        folder = parquet.day_dir(data_dir, table, "2024-01-01")
        # Six keys, records of one partition in order, some deleting their key, some read twice
        # (a crash between a file and its commit), spread over files at random.
        files: list[Columns] = [converter.columns() for _ in range(chance.randrange(3, 8))]
        for position in range(60):
            fields: dict[str, object] = {"created_time": f"2024-01-01 00:00:{position:02d}"}  # told apart
            if table.merge_deletes and chance.random() < 0.2:
                fields["deleted"] = 1
            record = sample(table.record, chance.randrange(6), "t", "2024-01-01", **fields)
            _, row = converter.row(record.dumps(), now)
            row += (0, position)
            for _ in range(1 + (chance.random() < 0.1)):
                for column, value in zip(chance.choice(files), row, strict=True):
                    column.append(value)
        for columns in files:
            if columns[0]:
                parquet.write_batch(folder, converter.arrow(columns))
        source = f"read_parquet('{folder}/*.parquet', hive_partitioning = false)"
        shown = sorted(map(repr, _query(layout.current_rows_sql(table, source))))
        stored = sorted(folder.glob("*.parquet"))
        merged = chance.sample(stored, chance.randrange(2, len(stored) + 1)) if len(stored) > 1 else stored
        parquet.compact(table, merged)
        assert sorted(map(repr, _query(layout.current_rows_sql(table, source)))) == shown, f"seed {seed}"
        assert not set(merged) & set(folder.glob("*.parquet"))


def test_records_of_the_five_topics_land_in_their_tables_columns(
    broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    sink = new_sink(sinks, tmp_path, broker.bootstrap)
    sink.start()
    sent = {t.name: [sample(t.record, n, tenant, day) for n in range(1, 4)] for t in DORIS_TABLES}
    asyncio.run(
        publish(broker.bootstrap, [message(TABLES[name], r) for name, rs in sent.items() for r in rs])
    )

    for table in DORIS_TABLES:

        def landed(table: DorisTable = table) -> bool:
            return len(sink.rows(table, tenant)) == 3

        wait_for(landed, 30, f"three rows in {table.name}")
        rows = sorted(sink.rows(table, tenant), key=lambda r: r["created_time"])
        assert list(rows[0]) == [c.name for c in table.columns], "the table's columns, key first"
        computed = [c.name for c in table.computed]
        assert [{k: v for k, v in r.items() if k not in computed} for r in rows] == [
            _expected(table, record) for record in sent[table.name]
        ]
        # updated_time: set by the sink when it reads the record, as Doris sets it with NOW()
        assert all(isinstance(r[name], datetime) for r in rows for name in computed)
        for file in sink.files(table, day):
            assert pq.read_schema(file).remove_metadata() == layout.arrow_schema(table)


def test_a_unique_table_keeps_a_keys_last_record_and_a_deleting_record_removes_it(
    broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    sink = new_sink(sinks, tmp_path, broker.bootstrap)
    sink.start()
    study = "1.2.3.4.5"

    def series(n: int, **fields: object) -> Record:
        return sample(DicomStateMeta, n, tenant, day, study_uid=study, **fields)

    def image(n: int, **fields: object) -> Record:
        return sample(DicomImageMeta, n, tenant, day, study_uid=study, **fields)

    records = [
        (STATES, series(1, modality="CT")),
        (STATES, series(2, modality="MR")),
        (IMAGES, image(1, image_status="received")),
        (STATES, series(1, modality="PT")),  # replaces series 1
        (STATES, series(2, deleted=1)),  # removes series 2
        (IMAGES, image(1, image_status="converted")),
        (IMAGES, image(2)),
        (IMAGES, image(2, deleted=1)),
        (STATES, series(3, modality="US")),  # last of its partition: when it shows, all did
    ]
    asyncio.run(publish(broker.bootstrap, [message(t, r) for t, r in records]))

    wait_for(
        lambda: any(r["series_uid"] == "series_uid-3" for r in sink.rows(STATES, tenant)), 30, "series 3"
    )
    wait_for(lambda: sink.rows(IMAGES, tenant), 30, "the images")
    assert {r["series_uid"]: r["modality"] for r in sink.rows(STATES, tenant)} == {
        "series_uid-1": "PT",
        "series_uid-3": "US",
    }
    assert {r["sop_uid"]: r["image_status"] for r in sink.rows(IMAGES, tenant)} == {"sop_uid-1": "converted"}
    # On disk every record is a row; the views apply the table's model.
    assert len(sink.stored(STATES, tenant)) == 5


def test_a_sink_killed_mid_write_loses_no_row_and_duplicates_none(
    broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    count = 6000
    sink = new_sink(sinks, tmp_path, broker.bootstrap, analytics_roll_rows="500", analytics_roll_s="0.2")
    first = sink.start()
    images = [sample(DicomImageMeta, n, tenant, day) for n in range(count)]
    objects = [sample(DicomObjectMeta, n, tenant, day) for n in range(count)]
    messages = [
        m for i, o in zip(images, objects, strict=True) for m in (message(IMAGES, i), message(OBJECTS, o))
    ]
    producing = threading.Thread(target=lambda: asyncio.run(publish(broker.bootstrap, messages)))
    producing.start()
    try:
        wait_for(lambda: sink.files(IMAGES, day), 60, "the sink's first file")
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        sink.start()
    finally:
        producing.join(120)

    def caught_up() -> bool:
        return len(sink.rows(IMAGES, tenant)) >= count and len(sink.rows(OBJECTS, tenant)) >= count

    wait_for(caught_up, 120, "the restarted sink to catch up")
    for table in (IMAGES, OBJECTS):
        keys = [tuple(r[k] for k in table.key) for r in sink.rows(table, tenant)]
        assert len(keys) == count, f"{table.name}: {len(keys) - len(set(keys))} keys twice"
        assert set(keys) == {
            tuple(getattr(r, k) for k in table.key) for r in (images if table is IMAGES else objects)
        }

    # A crash between a file's rename and its commit leaves the file's rows on disk twice: made
    # here for certain by copying a file. The views count each once; compaction at the next start
    # removes the copies from disk.
    assert sink.service.stop() == 0
    duplicated = sink.files(OBJECTS, day)[-1]
    shutil.copy(duplicated, duplicated.with_name(f"batch-copy-{duplicated.name}"))
    stored = sink.stored(OBJECTS, tenant)
    assert len(stored) > len({(r["_partition"], r["_offset"]) for r in stored})
    assert len(sink.rows(OBJECTS, tenant)) == count
    crowded = [t.name for t in (IMAGES, OBJECTS) if len(sink.files(t, day)) >= 2]
    sink.start()
    wait_for(
        lambda: (
            {e["table"] for e in sink.service.events("analytics_compacted") if e["day"] == day}
            >= set(crowded)
        ),
        60,
        f"compaction of {crowded} at start",
    )
    for table in (IMAGES, OBJECTS):
        stored = sink.stored(table, tenant)
        assert len(stored) == count, f"{table.name}: {len(stored) - count} copies left on disk"
        assert len(sink.files(table, day)) == 1
        assert len(sink.rows(table, tenant)) == count


def test_sinks_joining_and_leaving_the_group_lose_no_row_and_double_none(
    broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    # The first sink writes a file per 2000 rows and otherwise holds what it read for a minute: a
    # rebalance finds rows in its hands, which it must write and commit before it lets go.
    first = new_sink(
        sinks, tmp_path / "first", broker.bootstrap, analytics_roll_rows="2000", analytics_roll_s="60"
    )
    second = new_sink(sinks, tmp_path / "second", broker.bootstrap)  # each writes a folder of its own
    objects = [sample(DicomObjectMeta, n, tenant, day) for n in range(4000)]

    def send(part: list[Record]) -> None:
        asyncio.run(publish(broker.bootstrap, [message(OBJECTS, o) for o in part]))

    first.start()
    send(objects[:2000])
    wait_for(lambda: first.files(OBJECTS, day), 60, "the first sink's first file")
    send(objects[2000:3000])
    second.start()  # the group rebalances
    send(objects[3000:])
    assert first.service.stop() == 0  # and again: the second sink takes every partition

    def rows() -> list[dict[str, Any]]:
        folders = [layout.table_dir(s.data_dir, OBJECTS) for s in (first, second)]
        globs = ", ".join(f"'{f}/*/*.parquet'" for f in folders if any(f.glob("*/*.parquet")))
        source = f"read_parquet([{globs}], hive_partitioning = false)"
        current = layout.current_rows_sql(OBJECTS, source)
        return _query(f"SELECT * FROM ({current}) WHERE tenant_id = ?", tenant)  # noqa: S608  # our own SQL

    wait_for(lambda: len(rows()) >= len(objects), 120, "every record in one folder or the other")
    assert sorted(r["sop_uid"] for r in rows()) == sorted(o.sop_uid for o in objects)  # type: ignore[attr-defined]
    assert second.events("analytics_written"), "the second sink took partitions over"


def test_a_malformed_record_is_logged_and_skipped_and_later_ones_land(
    own_broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    # A broker of its own: the session's topics are read by other tests (and workers) that
    # expect JSON in them.
    sink = new_sink(sinks, tmp_path, own_broker.bootstrap)
    sink.start()
    good = sample(DicomStateMeta, 1, tenant, day)
    key = topics.study_key(good.study_uid)  # type: ignore[attr-defined]
    wrong_type = good.dumps().replace(b'"series_related_instances":1', b'"series_related_instances":"many"')
    bad_time = sample(DicomStateMeta, 2, tenant, day, created_time="yesterday").dumps()
    bad_date = sample(DicomStateMeta, 3, tenant, day, study_date="2024-02-30").dumps()
    too_big = sample(DicomStateMeta, 4, tenant, day, series_related_instances=2**40).dumps()  # INT
    bad = [b"{not json", wrong_type, bad_time, bad_date, None, too_big]
    sent = asyncio.run(
        publish(own_broker.bootstrap, [(STATES.topic, value, key) for value in [*bad, good.dumps()]])
    )

    wait_for(lambda: sink.rows(STATES, tenant), 30, "the good record")
    # Refused when read ("offset"), or by Arrow when its batch is converted ("position": the
    # offset plus the partition's base, 0 in a new data folder).
    skipped = {
        (e["partition"], e.get("offset", e.get("position"))): str(e["error"])
        for e in sink.events("analytics_record_skipped")
        if e["topic"] == STATES.topic
    }
    errors = [skipped.get((m.partition, m.offset), "") for m in sent[: len(bad)]]
    assert all(errors), f"each bad record is logged: {errors}"
    assert "series_related_instances" in errors[1]
    assert "created_time" in errors[2]
    assert "study_date" in errors[3]
    assert "tombstone" in errors[4]
    assert "series_related_instances" in errors[5]
    assert [r["series_uid"] for r in sink.rows(STATES, tenant)] == [good.series_uid]  # type: ignore[attr-defined]
    assert sink.service.alive()


def test_a_restarted_broker_numbers_records_again_and_none_is_taken_for_another(
    own_broker: Broker, sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    env = {"PACSFLOW_KAFKA_BOOTSTRAP": own_broker.bootstrap}
    assert pacsflow("topics", env=env).returncode == 0
    status = pacsflow("status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"{OBJECTS.name:<20} {OBJECTS.topic:<20} not started" in status.stdout, status.stdout
    sink = new_sink(sinks, tmp_path, own_broker.bootstrap)
    sink.start()
    before = [sample(DicomObjectMeta, n, tenant, day) for n in range(50)]
    asyncio.run(publish(own_broker.bootstrap, [message(OBJECTS, r) for r in before]))
    wait_for(lambda: len(sink.rows(OBJECTS, tenant)) == 50, 30, "the first records")

    def sink_status() -> list[str]:
        lines = pacsflow("status", env=env).stdout.splitlines()
        return next(line.split() for line in lines if line.startswith(f"{OBJECTS.name} "))

    # table, topic, committed (summed over the partitions), end offset, lag
    wait_for(lambda: sink_status()[2] == "50", 30, "the sink's commits to show in `pacsflow status`")
    assert sink_status()[-1] == "0"

    own_broker.stop()  # memory only: its topics, offsets and groups are gone
    wait_for(lambda: sink.events("analytics_broker_unreachable"), 30, "the sink to say the broker is away")
    own_broker.start()  # same port, empty
    assert pacsflow("topics", env=env).returncode == 0  # as `pacsflow dev` does after a restart
    after = [sample(DicomObjectMeta, n, tenant, day) for n in range(50, 100)]
    asyncio.run(publish(own_broker.bootstrap, [message(OBJECTS, r) for r in after]))

    wait_for(lambda: len(sink.rows(OBJECTS, tenant)) >= 100, 60, "the records of the new broker")
    assert {r["sop_uid"] for r in sink.rows(OBJECTS, tenant)} == {r.sop_uid for r in before + after}  # type: ignore[attr-defined]
    assert len(sink.rows(OBJECTS, tenant)) == 100
    assert sink.events("analytics_positions_restarted")
    assert sink.service.alive(), "the sink rode out the outage"


def test_a_sink_started_before_its_broker_waits_for_it(
    sinks: list[Sink], tmp_path: Path, tenant: str, day: str
) -> None:
    late = Broker(tmp_path / "late-tansu.log")
    sink = new_sink(sinks, tmp_path, late.bootstrap)
    waiting = Service("analytics", sink.env, tmp_path / "sink0.log").start()
    sink.runs.append(waiting)
    try:
        wait_for(lambda: waiting.events("analytics_retrying"), 30, "the sink to say it waits for the broker")
        assert waiting.alive()
        late.start()
        wait_for(lambda: waiting.events("analytics_ready"), 60, "the sink to reach the broker once it is up")
        record = sample(DicomObjectMeta, 1, tenant, day)
        asyncio.run(publish(late.bootstrap, [message(OBJECTS, record)]))
        wait_for(lambda: sink.rows(OBJECTS, tenant), 30, "the record")
    finally:
        sink.stop()
        late.stop()
