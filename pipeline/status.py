"""``pacsflow status``: what the operators look at. Per topic and partition: end offset, the
worker group's committed offset and lag; per analytics table, the analytics sink's committed
offsets and lag (or that it has not started); the dead-letter queue's size; with a database, how many
series have their metadata files current, pending or failed, and how many instances wait for their
conversion or failed it; and each worker whose index (or conversion) stream is held, since when
and why.

Lag is end offset minus committed offset: exact on Kafka; on Tansu, whose offsets are not dense
within a partition, it is an upper bound (zero still means caught up)."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import log, topics
from pipeline.models import DORIS_TABLES
from pipeline.models.formats import iso_utc
from pipeline.retries import describe, until_it_works
from pipeline.settings import Settings
from pipeline.stores import conversions, json_meta

GROUP = "pacsflow"  # the Faust app id, which is the consumer group of every worker
_HELD_NOTES = "*-held-*.json"
_log = log.get(__name__)
T = TypeVar("T")


class HoldNote:
    """A worker's note that one of its streams (``index``, ``conversion``) is held, and why, for
    `pacsflow status`.

    A file in the data dir's run folder rather than a row or a record: what holds the stream is
    often the database, and status must show it then. One per stream and node id; the worker
    deletes its own when the stream flows again, and at start (a worker that died held leaves its
    note, dated).
    """

    def __init__(self, settings: Settings, stream: str = "index") -> None:
        self._node_id = settings.node_id
        self.stream = stream
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", settings.node_id)
        self.path = settings.run_dir / f"{stream}-held-{name}.json"
        self.since: datetime | None = None

    async def until_done(self, waiting_for: str, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation``'s result, retried until it works (``retries.until_it_works``), the stream
        noted held meanwhile: for what depends on the database's, the broker's or the storage's
        state. Logs ``<stream>_retrying`` before each wait and ``<stream>_resumed`` after a hold."""
        async for attempt in until_it_works(
            f"{self.stream}_retrying",
            on_wait=lambda error: self.held(waiting_for, error),
            waiting_for=waiting_for,
        ):
            with attempt:
                result = await operation()
        if self.since is not None:
            _log.info(
                f"{self.stream}_resumed", waited_for=waiting_for, held_s=round(self.flowing() or 0.0, 1)
            )
        return result

    def held(self, waiting_for: str, error: BaseException | None) -> None:
        now = datetime.now(UTC)
        self.since = self.since or now
        note = {
            "stream": self.stream,
            "node_id": self._node_id,
            "waiting_for": waiting_for,
            "reason": describe(error),
            "since": iso_utc(self.since),
            "last_retry": iso_utc(now),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            written = self.path.with_suffix(".tmp")
            written.write_text(json.dumps(note), encoding="utf-8")
            written.replace(self.path)  # status never reads half a note
        except OSError as exc:  # e.g. the disk is full: the log still says why the stream is held
            _log.warning("hold_note_not_written", path=str(self.path), error=describe(exc))

    def flowing(self) -> float | None:
        """Delete the note; return how long the stream was held (s), if it was."""
        held = (datetime.now(UTC) - self.since).total_seconds() if self.since else None
        self.since = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            _log.warning("hold_note_not_deleted", path=str(self.path), error=describe(exc))
        return held


def held_lines(settings: Settings) -> list[str]:
    """One line per worker stream whose note says it is held."""
    lines = []
    for path in sorted(settings.run_dir.glob(_HELD_NOTES)):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # deleted meanwhile: that worker flows again
            continue
        lines.append(
            f"{note.get('stream', 'index')} held on {note['node_id']} since {note['since']}, "
            f"waiting for {note['waiting_for']} (last retry {note['last_retry']}): {note['reason']}"
        )
    return lines


def _group_reader(settings: Settings, group: str) -> AIOKafkaConsumer:
    # A consumer of the group that never subscribes: it reads the group's committed offsets
    # without joining it (and so without a rebalance). Tansu answers the admin client's
    # ListConsumerGroupOffsets in a form aiokafka cannot decode; this way works on both.
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )


async def _committed(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    return {tp: await consumer.committed(tp) for tp in partitions}


def _lag(end: int, committed: int | None) -> int | None:
    return None if committed is None else max(0, end - committed)


@dataclass(frozen=True)
class Offsets:
    """The topics' offsets as the worker group sees them: what `pacsflow status` and the worker's
    ``/metrics`` show."""

    existing: frozenset[str]
    partitions: list[TopicPartition]
    ends: dict[TopicPartition, int]
    committed: dict[TopicPartition, int | None]
    dead_letters: int
    """Records in the dead-letter topic: counted by reading them when ``offsets`` was asked to,
    else end minus beginning offset, an upper bound on Tansu (whose offsets are not dense)."""

    def lag(self, tp: TopicPartition) -> int | None:
        """End offset minus the group's committed offset; None while the group has committed none."""
        return _lag(self.ends[tp], self.committed[tp])


async def offsets(settings: Settings, *, count_dead_letters: bool = False) -> Offsets:
    """The offsets, and the dead letters: read and counted with ``count_dead_letters`` (`pacsflow
    status`: exact, but as long as the topic is), else taken from the offsets alone (a scrape: it
    must answer within seconds however many there are)."""
    consumer = _group_reader(settings, GROUP)
    try:
        # Inside the try: a start cancelled by a timeout must still stop what it opened (stop()
        # is safe after a partial start).
        await consumer.start()
        existing = await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics.ALL
            if topic in existing
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await consumer.end_offsets(partitions)
        committed = await _committed(consumer, partitions)
        dead = [tp for tp in partitions if tp.topic == topics.STORAGE_DLQ]
        starts = await consumer.beginning_offsets(dead) if dead else {}
        if count_dead_letters:
            dlq = await _count(consumer, dead, starts, ends)
        else:
            dlq = sum(max(0, ends[tp] - starts[tp]) for tp in dead)
    finally:
        await consumer.stop()
    return Offsets(frozenset(existing), partitions, ends, committed, dlq)


async def database_counts(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[dict[str, int], dict[str, int]]:
    """Series per metadata status (done, pending, failed); instances per conversion status
    (pending, failed)."""
    return await json_meta.pending_counts(conn), await conversions.counts(conn)


async def status(settings: Settings) -> list[str]:
    found = await offsets(settings, count_dead_letters=True)
    existing, partitions, ends, committed = found.existing, found.partitions, found.ends, found.committed
    dlq = found.dead_letters
    analytics = _group_reader(settings, topics.ANALYTICS_GROUP)
    try:
        await analytics.start()
        sink = await _committed(analytics, [tp for tp in partitions if tp.topic in topics.DORIS_BOUND])
    finally:
        await analytics.stop()
    lines = [f"{'topic':<20} {'partition':>9} {'end offset':>10} {'committed':>10} {'lag':>8}"]
    for tp in partitions:
        offset = committed[tp]
        lag = _lag(ends[tp], offset)
        shown = "" if offset is None else offset
        lines.append(
            f"{tp.topic:<20} {tp.partition:>9} {ends[tp]:>10} {shown:>10} {'' if lag is None else lag:>8}"
        )
    missing = [topic for topic in topics.ALL if topic not in existing]
    if missing:
        lines.append(f"topics missing (run `pacsflow topics`): {', '.join(missing)}")
    lines += analytics_lines(sink, ends)
    lines.append(f"dead letters in {topics.STORAGE_DLQ}: {dlq}")
    lines += held_lines(settings)
    if settings.database_url:
        lines += await _database_lines(settings.database_url)
    return lines


def analytics_lines(
    committed: dict[TopicPartition, int | None], ends: dict[TopicPartition, int]
) -> list[str]:
    """Per analytics table: the sink's committed offsets, summed over the topic's partitions, the
    end offsets and the lag; "not started" while the sink's group has committed none of them."""
    lines = [f"{'analytics table':<20} {'topic':<20} {'committed':>10} {'end offset':>10} {'lag':>8}"]
    for table in DORIS_TABLES:
        tps = [tp for tp in committed if tp.topic == table.topic]
        if not tps:
            continue
        if all(committed[tp] is None for tp in tps):
            lines.append(f"{table.name:<20} {table.topic:<20} not started")
            continue
        # A partition the sink has not committed yet is behind by all it holds.
        offset = sum(committed[tp] or 0 for tp in tps)
        lag = sum(_lag(ends[tp], committed[tp] or 0) or 0 for tp in tps)
        lines.append(
            f"{table.name:<20} {table.topic:<20} {offset:>10} {sum(ends[tp] for tp in tps):>10} {lag:>8}"
        )
    return lines


async def _database_lines(dsn: str) -> list[str]:
    # When the database is what holds the index, say so here rather than lose the lines above.
    try:
        conn = await asyncpg.connect(dsn)
        try:
            series, instances = await database_counts(conn)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return [f"series metadata and conversions: unknown, the database fails: {describe(exc)}"]
    return [
        f"series metadata: {series['done']} current, {series['pending']} pending, {series['failed']} failed",
        f"conversions: {instances['pending']} pending, {instances['failed']} failed",
    ]


async def _count(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> int:
    """Records in ``partitions``, by reading them: offsets need not be dense (Tansu's are not)."""
    pending = [tp for tp in partitions if ends[tp] > starts[tp]]
    if not pending:
        return 0
    consumer.assign(pending)
    for tp in pending:
        consumer.seek(tp, starts[tp])
    count = 0
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=2000)
        if not batch:
            break
        count += sum(len(records) for records in batch.values())
        pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
    return count
