"""`pacsflow analytics`: the Doris-bound topics into Parquet tables, on one machine.

One consumer of group ``ANALYTICS_GROUP`` reads the five topics. Each record is decoded with its
record class and becomes a row of its table (the layout's Arrow schema); a record that does not
decode is logged and skipped. Rows are gathered per table and day; every ``analytics_roll_s``
seconds, or ``analytics_roll_rows`` rows, each batch is written durably (``analytics.parquet``)
and only then are the offsets of what was read committed. A crash therefore loses nothing: what was
not committed is read again, and written again if the crash fell between a file and its commit.
Those second copies carry the same Kafka position: ``layout.current_rows_sql`` counts them once,
and compaction removes them from disk.

Positions. The embedded broker keeps everything in memory: restarted, it numbers each partition
from 0 again, and new records would take the positions of stored rows (seen as their copies in a
DUPLICATE table, as older than them in a UNIQUE one). So a row's ``_offset`` is its Kafka offset
plus a base per partition, kept in ``<table>/bases.json``. When the group has no committed offset
for a partition (a new broker, or a new group), or its offsets went back while the sink ran (a
restarted broker's records, fetched before the group noticed), the sink moves the base past every
position stored for the partition, then commits the partition's first offset at once, so that a
sink restarted before its first file is committed keeps the base it wrote with. With a Kafka whose
group offsets expired (a sink stopped for longer than the broker keeps them), records still
retained are read again under a new base: DUPLICATE tables then show them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import operator
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from analytics import layout, parquet
from pipeline import lifecycle, log, topics
from pipeline.models import DORIS_TABLES, DorisTable
from pipeline.retries import describe, until_it_works
from pipeline.settings import Settings

_log = log.get(__name__)


class WentBack(Exception):
    """A partition's offsets went back: the broker restarted, or the topic was made again."""


class BrokerLost(Exception):
    """The broker stopped answering: the one that answers next may be a new one, which numbers its
    records from 0 and would take a commit of the old one's offsets."""


_FAILURES: tuple[type[BaseException], ...] = (
    *topics.BROKER_FAILURES,
    duckdb.Error,
    WentBack,
    BrokerLost,
)
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)
_IDLE_PROBE_S = 5.0
_UNREACHABLE_EVERY_S = 30.0
BASES = "bases.json"

Row = list[object]
Columns = list[list[object]]
"""A batch, column by column in the schema's order: no object per row to build, then transpose."""


def _date(text: str) -> date:
    return date.fromisoformat(text)


def _datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _check(column_kind: str) -> Callable[[object], object] | None:
    """What turns a record's string into its Arrow value. Integers out of their column's range
    are not looked for here, per value: Arrow refuses them when the batch is converted, and the
    sink then skips their rows (``Sink._arrow``)."""
    if column_kind == "DATE":
        return _date  # type: ignore[return-value]
    if column_kind == "DATETIME":
        return _datetime  # type: ignore[return-value]
    return None


class Table:
    """A Doris table as the sink fills it: how a record becomes a row, and rows a Parquet table."""

    def __init__(self, table: DorisTable) -> None:
        self.table = table
        self.schema = layout.arrow_schema(table)
        fields = table.record.__struct_fields__
        names = [c.name for c in table.columns]
        # Per record: the fields put in the table's order in one step, then the few values that
        # need a check or a conversion, then the computed columns: the sink's hot path.
        self._order = operator.itemgetter(*(fields.index(n) for n in names if n in fields))
        self._checks: list[tuple[int, str, Callable[[object], object]]] = []
        self._computed: list[int] = []
        for position, column in enumerate(table.columns):
            if column.name in fields:
                check = _check(column.kind)
                if check is not None:
                    self._checks.append((position - len(self._computed), column.name, check))
            elif column.expression == "NOW()":
                self._computed.append(position)
            else:
                raise TypeError(f"{table.name}.{column.name} is neither a record field nor NOW()")
        self._day = names.index("created_time")

    def row(self, value: bytes | None, now: datetime) -> tuple[date, Row]:
        """The row of one record and the day it is filed under; ValueError naming what is wrong."""
        if value is None:
            raise ValueError("no value (a tombstone)")
        row: Row = list(self._order(msgspec.structs.astuple(self.table.record.loads(value))))
        for position, name, check in self._checks:
            item = row[position]
            if item is not None:
                try:
                    row[position] = check(item)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{name}: {exc}") from None
        for position in self._computed:
            row.insert(position, now)
        created = row[self._day]
        assert isinstance(created, datetime)
        return created.date(), row

    def columns(self) -> Columns:
        return [[] for _ in self.schema]

    def arrow(self, columns: Columns) -> pa.Table:
        arrays = [pa.array(values, type=f.type) for values, f in zip(columns, self.schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=self.schema)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink, consumer: AIOKafkaConsumer) -> None:
        self._sink = sink
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sink.revoked(self._consumer)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sink.assigned(self._consumer, assigned)


class Compactor:
    """Compacts day folders one at a time, in the background: a folder is offered after each
    write that leaves it with too many small files, and every crowded one at start."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[DorisTable, Path]] = asyncio.Queue()
        self._queued: set[Path] = set()

    def offer(self, table: DorisTable, folder: Path) -> None:
        if folder not in self._queued:
            self._queued.add(folder)
            self._queue.put_nowait((table, folder))

    async def run(self) -> None:
        while True:
            table, folder = await self._queue.get()
            self._queued.discard(folder)
            started = time.monotonic()
            try:
                files = await asyncio.to_thread(parquet.small_files, folder)
                if len(files) < 2:
                    continue
                done = await asyncio.to_thread(parquet.compact, table, files)
            except (OSError, duckdb.Error) as exc:  # the files stay as they are, and correct
                _log.warning("analytics_compaction_failed", folder=str(folder), error=describe(exc))
                continue
            _log.info(
                "analytics_compacted",
                table=table.name,
                day=folder.name.partition("=")[2],
                files=done.files,
                rows_in=done.rows_in,
                rows_out=done.rows_out,
                seconds=round(time.monotonic() - started, 3),
            )


class Sink:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables = {t.topic: Table(t) for t in DORIS_TABLES}
        self._lock = asyncio.Lock()
        self.compactor = Compactor()
        self._batches: dict[tuple[str, date], Columns] = {}
        self._rows = 0
        self._first_at: float | None = None
        self._consumed: dict[TopicPartition, int] = {}
        """Next offset of each partition, past every record read (rows and skipped ones)."""
        self._written: dict[TopicPartition, int] = {}
        """Next offset of each partition, past every record in a durable file: what to commit."""
        self._committed: dict[TopicPartition, int] = {}
        self._bases: dict[TopicPartition, int] = {}
        self._went_back: dict[TopicPartition, tuple[int, int]] = {}
        self._failure: BaseException | None = None
        self._ready = False
        self._idle_since = time.monotonic()
        self._unreachable_logged = float("-inf")
        self._unreachable = False

    # -- start -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Delete what a crash left half-written; offer every crowded day folder for compaction."""
        data_dir = self._settings.data_dir
        removed = parquet.remove_partial(layout.root(data_dir))
        if removed:
            _log.info("analytics_partial_files_removed", files=len(removed))
        for table in self._tables.values():
            for folder in parquet.day_dirs(data_dir, table.table):
                if len(parquet.small_files(folder)) >= 2:
                    self.compactor.offer(table.table, folder)

    def _consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        options: dict[str, int] = {}
        # Unset: the client's defaults, which a real Kafka wants. Tansu forms a group only after a
        # whole session timeout, so `pacsflow dev` sets these short.
        if settings.kafka_session_timeout_s is not None:
            options["session_timeout_ms"] = int(settings.kafka_session_timeout_s * 1000)
        if settings.kafka_heartbeat_interval_s is not None:
            options["heartbeat_interval_ms"] = int(settings.kafka_heartbeat_interval_s * 1000)
        return AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=topics.ANALYTICS_GROUP,
            client_id=f"pacsflow-analytics-{settings.node_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
            **options,
        )

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, through any broker outage; then write and commit what
        was read."""

        async def nap(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

        retrying = until_it_works(
            "analytics_retrying", _FAILURES, bootstrap=self._settings.kafka_bootstrap
        ).copy(sleep=nap)
        await retrying(self._consume, stop)

    async def _consume(self, stop: asyncio.Event) -> None:
        if stop.is_set():
            return
        created = await topics.ensure_topics(self._settings)
        if created:
            _log.info("topics_created", topics=created, partitions=self._settings.kafka_partitions)
        consumer = self._consumer()
        await consumer.start()
        self._failure = None
        if self._unreachable:
            self._unreachable, self._unreachable_logged = False, float("-inf")
            _log.info("analytics_broker_reachable", bootstrap=self._settings.kafka_bootstrap)
        try:
            consumer.subscribe(list(topics.DORIS_BOUND), listener=_Listener(self, consumer))
            # Ready once connected: what it reads waits in the broker meanwhile, so `pacsflow dev`
            # need not wait for the group to form (a whole session timeout on Tansu).
            lifecycle.notify_ready()
            while not stop.is_set():
                room = max(1, self._settings.analytics_roll_rows - self._rows)
                batch = await consumer.getmany(timeout_ms=self._wait_ms(), max_records=room)
                if self._failure is not None:
                    raise self._failure
                if self._unreachable and batch:
                    raise BrokerLost("the broker answers again: starting over with a new consumer")
                await self._check_positions(consumer, batch)
                now = datetime.now(UTC).replace(tzinfo=None)
                for tp, records in batch.items():
                    if tp not in self._bases:
                        # aiokafka fetches as soon as a partition is assigned, before `assigned`
                        # has given it its base: those records are read again once it has.
                        if records:
                            consumer.seek(tp, records[0].offset)
                        continue
                    self._add(tp, records, now)
                if self._due():
                    async with self._lock:
                        await self._flush(consumer, "roll")
                if batch:
                    self._idle_since = time.monotonic()
                elif time.monotonic() - self._idle_since > _IDLE_PROBE_S:
                    await self._probe(consumer)
            async with self._lock:
                await self._flush(consumer, "stop")
        except asyncio.CancelledError:
            # Cancelled rather than stopped: still write and commit what was read.
            async with self._lock:
                await self._flush(consumer, "cancelled")
            raise
        finally:
            self._drop()
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                    await consumer.stop()

    async def _check_positions(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Raise WentBack when a partition's offsets went back since the assignment: records of a
        new broker, fetched before the group noticed it is new. What was read before is written
        (the old broker may be gone with it); the next assignment gives the partition a new base."""
        back = {}
        for tp, records in batch.items():
            expected = self._consumed.get(tp, self._committed.get(tp))
            if records and expected is not None and records[0].offset < expected:
                back[tp] = (expected, records[0].offset)
        if not back:
            return
        self._went_back.update(back)
        async with self._lock:
            await self._flush(consumer, "offsets went back")
        raise WentBack(
            ", ".join(f"{tp.topic}[{tp.partition}] from {a} to {b}" for tp, (a, b) in back.items())
        )

    def _add(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]], now: datetime) -> None:
        table = self._tables[tp.topic]
        base = self._bases[tp]
        for record in records:
            try:
                day, row = table.row(record.value, now)
            except (ValueError, TypeError) as exc:
                _log.warning(
                    "analytics_record_skipped",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    error=str(exc)[:500],
                )
                continue
            row += (tp.partition, base + record.offset)
            batch = self._batches.get((tp.topic, day))
            if batch is None:
                batch = self._batches[(tp.topic, day)] = table.columns()
            for column, item in zip(batch, row, strict=True):
                column.append(item)
            self._rows += 1
        if records:
            self._consumed[tp] = records[-1].offset + 1
            if self._first_at is None:
                self._first_at = time.monotonic()

    def _due(self) -> bool:
        if self._rows >= self._settings.analytics_roll_rows:
            return True
        return (
            self._first_at is not None
            and time.monotonic() - self._first_at >= self._settings.analytics_roll_s
        )

    def _wait_ms(self) -> int:
        if self._first_at is None:
            return 1000
        left = self._settings.analytics_roll_s - (time.monotonic() - self._first_at)
        return int(min(1.0, max(0.01, left)) * 1000)

    def _drop(self) -> None:
        """Forget what was read and not written: the next assignment reads it again from the
        committed offsets."""
        self._batches, self._rows, self._first_at = {}, 0, None
        self._consumed.clear()
        self._bases = {}

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """When nothing arrives, check that the broker answers: aiokafka retries on its own and
        getmany just returns nothing, so say it here when it does not."""
        self._idle_since = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                await consumer.topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            self._unreachable = True
            if time.monotonic() - self._unreachable_logged >= _UNREACHABLE_EVERY_S:
                self._unreachable_logged = time.monotonic()
                _log.warning(
                    "analytics_broker_unreachable",
                    bootstrap=self._settings.kafka_bootstrap,
                    error=describe(exc),
                    note="retrying until it answers",
                )
            # What was read is written but not committed: should a new (embedded) broker answer
            # next, neither these offsets nor its first records may be taken for the old one's.
            # Without bases, whatever this consumer fetches is left unread (see _consume); once
            # the broker answers, a new consumer asks it for its commits: the same broker gives
            # the same ones (the rows written again are copies at the same positions), a new one
            # none, and the partitions get new bases.
            async with self._lock:
                await self._flush(consumer, "broker lost", commit=False)
                self._drop()
            return
        if self._unreachable:
            raise BrokerLost("the broker answers again: starting over with a new consumer")

    # -- writing and committing ----------------------------------------------------------------

    async def _flush(self, consumer: AIOKafkaConsumer, reason: str, *, commit: bool = True) -> None:
        """Write every batch durably, then commit the offsets they cover. The caller holds the
        lock. Raises if a file cannot be written: nothing of it is committed."""
        batches, rows, consumed = self._batches, self._rows, dict(self._consumed)
        self._batches, self._rows, self._first_at = {}, 0, None
        if batches:
            started = time.monotonic()
            crowded = await asyncio.to_thread(self._write, batches)
            _log.info(
                "analytics_written",
                reason=reason,
                rows=rows,
                files=len(batches),
                seconds=round(time.monotonic() - started, 3),
            )
            for table, folder in crowded:
                self.compactor.offer(table, folder)
        self._written.update(consumed)
        if commit:
            await self._commit(consumer)

    def _write(self, batches: dict[tuple[str, date], Columns]) -> list[tuple[DorisTable, Path]]:
        """Write each batch as a file; return the folders now due for compaction."""
        crowded = []
        for (topic, day), rows in batches.items():
            table = self._tables[topic]
            folder = parquet.day_dir(self._settings.data_dir, table.table, day.isoformat())
            converted = self._arrow(table, rows)
            if converted.num_rows == 0:  # every row refused by Arrow, and logged
                continue
            parquet.write_batch(folder, converted)
            if len(parquet.small_files(folder)) > parquet.COMPACT_AFTER:
                crowded.append((table.table, folder))
        return crowded

    def _arrow(self, table: Table, columns: Columns) -> pa.Table:
        try:
            return table.arrow(columns)
        except _ARROW_ERRORS:
            pass
        # A value the row checks let through and Arrow refuses: skip its row, never the batch
        # (which would be read, and refused, again and again).
        bad: dict[int, str] = {}
        for values, field in zip(columns, table.schema, strict=True):
            try:
                pa.array(values, type=field.type)
            except _ARROW_ERRORS:
                for index, value in enumerate(values):
                    try:
                        pa.array([value], type=field.type)
                    except _ARROW_ERRORS as exc:
                        bad.setdefault(index, f"{field.name}: {exc}"[:500])
        for index, error in sorted(bad.items()):
            _log.warning(
                "analytics_record_skipped",
                topic=table.table.topic,
                partition=columns[-2][index],
                position=columns[-1][index],
                error=error,
            )
        return table.arrow([[v for i, v in enumerate(values) if i not in bad] for values in columns])

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        assigned = consumer.assignment()
        due = {
            tp: offset
            for tp, offset in self._written.items()
            if tp in assigned and offset > self._committed.get(tp, -1)
        }
        if not due:
            return
        try:
            async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                await consumer.commit(due)
        except (KafkaError, TimeoutError) as exc:
            # The files are durable: their offsets go with the next commit, or the records are read
            # again and their copies ignored.
            _log.warning("analytics_commit_failed", partitions=len(due), error=describe(exc))
            return
        self._committed.update(due)

    # -- rebalancing -------------------------------------------------------------------------

    async def revoked(self, consumer: AIOKafkaConsumer) -> None:
        """Before a rebalance: write and commit everything read, whoever gets the partitions next."""
        async with self._lock:
            try:
                await self._flush(consumer, "rebalance")
            except _FAILURES as exc:
                # Not committed: the partitions' next owner (perhaps this consumer again, from the
                # committed offsets) reads the records again.
                _log.warning("analytics_flush_failed", when="rebalance", error=describe(exc))
            finally:
                self._drop()

    async def assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        try:
            async with self._lock:
                await self._assigned(consumer, assigned)
        except Exception as exc:  # aiokafka would log it and go on consuming
            # Consuming without the partitions' bases would file rows under wrong positions: the
            # loop raises this and starts over with a new consumer.
            self._failure = exc
            return
        if not self._ready and assigned:
            self._ready = True
            _log.info("analytics_ready", partitions=len(assigned), group=topics.ANALYTICS_GROUP)

    async def _assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        # A new assignment reads every partition from its committed offset.
        self._drop()
        self._written.clear()
        self._committed.clear()
        fresh = []
        for tp in sorted(assigned):
            committed = await consumer.committed(tp)
            if committed is None or tp in self._went_back:
                fresh.append(tp)
            else:
                self._committed[tp] = committed
        self._bases = await asyncio.to_thread(self._load_bases, assigned, fresh)
        if fresh:
            starts = await consumer.beginning_offsets(fresh)
            async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                await consumer.commit(starts)
            self._committed.update(starts)
        self._went_back.clear()

    def _load_bases(
        self, assigned: set[TopicPartition], fresh: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        bases: dict[TopicPartition, int] = {}
        for topic in sorted({tp.topic for tp in assigned}):
            table = self._tables[topic].table
            path = layout.table_dir(self._settings.data_dir, table) / BASES
            stored = {int(p): int(b) for p, b in _read_json(path).items()}
            restarted = [tp.partition for tp in fresh if tp.topic == topic]
            if restarted:
                highest = parquet.max_offsets(self._settings.data_dir, table)
                moved = {
                    p: highest[p] + 1 for p in restarted if p in highest and highest[p] + 1 > stored.get(p, 0)
                }
                if moved:
                    stored.update(moved)
                    parquet.write_json(path, json.dumps({str(p): b for p, b in sorted(stored.items())}))
                    _log.info(
                        "analytics_positions_restarted",
                        table=table.name,
                        topic=topic,
                        bases={str(p): b for p, b in moved.items()},
                        reason="no committed offset: a new broker or group numbers records from its start",
                    )
            for tp in assigned:
                if tp.topic == topic:
                    bases[tp] = stored.get(tp.partition, 0)
        return bases


def _read_json(path: Path) -> dict[str, int]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a JSON object of partition -> base")
    return loaded


async def serve(settings: Settings) -> None:
    stop = lifecycle.stop_on_signals()
    sink = Sink(settings)
    _log.info(
        "analytics_starting",
        folder=str(layout.root(settings.data_dir)),
        roll_s=settings.analytics_roll_s,
        roll_rows=settings.analytics_roll_rows,
        bootstrap=settings.kafka_bootstrap,
    )
    await asyncio.to_thread(sink.prepare)
    compacting = asyncio.create_task(sink.compactor.run(), name="analytics-compactor")
    try:
        await sink.run(stop)
    finally:
        compacting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await compacting
    _log.info("analytics_stopped")
