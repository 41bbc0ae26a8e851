"""``pacsflow status``: what the operators look at. Per topic and partition: end offset, the
worker group's committed offset and lag; the dead-letter queue's size; with a database, how many
series have their metadata files current, pending or failed.

Lag is end offset minus committed offset: exact on Kafka; on Tansu, whose offsets are not dense
within a partition, it is an upper bound (zero still means caught up)."""

from __future__ import annotations

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import topics
from pipeline.settings import Settings
from pipeline.stores import json_meta

GROUP = "pacsflow"  # the Faust app id, which is the consumer group of every worker


async def status(settings: Settings) -> list[str]:
    # A consumer of the workers' group that never subscribes: it reads the group's committed
    # offsets without joining it (and so without a rebalance). Tansu answers the admin client's
    # ListConsumerGroupOffsets in a form aiokafka cannot decode; this way works on both.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        existing = await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics.ALL
            if topic in existing
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        dlq = await _count(
            consumer, [tp for tp in partitions if tp.topic == topics.STORAGE_DLQ], starts, ends
        )
    finally:
        await consumer.stop()
    lines = [f"{'topic':<20} {'partition':>9} {'end offset':>10} {'committed':>10} {'lag':>8}"]
    for tp in partitions:
        offset = committed[tp]
        lag = "" if offset is None else str(max(0, ends[tp] - offset))
        shown = "" if offset is None else offset
        lines.append(f"{tp.topic:<20} {tp.partition:>9} {ends[tp]:>10} {shown:>10} {lag:>8}")
    missing = [topic for topic in topics.ALL if topic not in existing]
    if missing:
        lines.append(f"topics missing (run `pacsflow topics`): {', '.join(missing)}")
    lines.append(f"dead letters in {topics.STORAGE_DLQ}: {dlq}")
    if settings.database_url:
        conn = await asyncpg.connect(settings.database_url)
        try:
            counts = await json_meta.pending_counts(conn)
        finally:
            await conn.close()
        done, pending, failed = counts["done"], counts["pending"], counts["failed"]
        lines.append(f"series metadata: {done} current, {pending} pending, {failed} failed")
    return lines


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
