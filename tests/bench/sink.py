"""`make bench-analytics`: rows/s the analytics sink writes, with topics of 1 and of 4 partitions.

Per run: a Tansu of the run's own on a free port, its topics made with 1 (or 4) partitions, and N
``dicom_image_queue`` records (``DicomImageMeta``, built from the model class as the integration
tests build them; 100 instances a study, so the studies spread over the partitions) published
before the sink starts. Then `pacsflow analytics` starts on an empty data folder, and the figure is
N over the time from its start until its group's committed offsets cover every record: process
start and group join included. "after ready" leaves them out: from the sink's ``analytics_ready``
(its partitions assigned) to the last commit. The files are then read back and their rows counted.

    python -m tests.bench.sink [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from datetime import datetime
from pathlib import Path

import duckdb
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from analytics import layout
from pipeline import settings as settings_module
from pipeline import topics
from pipeline.models import DicomImageMeta
from pipeline.models.doris import TABLES
from tests.integration.test_analytics_sink import sample
from tests.support.services import Broker, Service, clean_environment

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "sink"
IMAGES = next(t for t in TABLES if t.name == "dicom_image_meta")
PER_STUDY = 100


def say(message: str) -> None:
    print(message, flush=True)


async def prefill(bootstrap: str, rows: int) -> dict[TopicPartition, int]:
    """Publish ``rows`` image records; return each partition's offset after its last one."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        chunk = 5000
        for start in range(0, rows, chunk):
            sent = []
            for n in range(start, min(rows, start + chunk)):
                study = f"1.2.826.0.1.{n // PER_STUDY}"
                record = sample(DicomImageMeta, n, "bench", "2024-06-01", study_uid=study)
                sent.append(await producer.send(IMAGES.topic, record.dumps(), key=topics.study_key(study)))
            for done in await asyncio.gather(*sent):
                tp = TopicPartition(done.topic, done.partition)
                ends[tp] = max(ends.get(tp, 0), done.offset + 1)
            if (start + chunk) % 20000 == 0 or start + chunk >= rows:
                say(f"    published {min(rows, start + chunk):,} of {rows:,}")
    finally:
        await producer.stop()
    return ends


async def committed(bootstrap: str, ends: dict[TopicPartition, int]) -> int:
    """Records the sink's group has committed, counted against ``ends``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=topics.ANALYTICS_GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return sum([min(await consumer.committed(tp) or 0, end) for tp, end in ends.items()])
    finally:
        await consumer.stop()


def run(partitions: int, rows: int) -> dict[str, float]:
    folder = WORK / f"partitions-{partitions}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    broker = Broker(folder / "tansu.log").start()
    sink: Service | None = None
    try:
        env = {
            "PACSFLOW_DATA_DIR": str(folder / "var"),
            "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "PACSFLOW_KAFKA_PARTITIONS": str(partitions),
            # As `pacsflow dev` runs it with its embedded broker.
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
        }
        asyncio.run(topics.ensure_topics(settings_module.load({**clean_environment(), **env})))
        say(f"  {partitions} partition(s): publishing {rows:,} records ...")
        ends = asyncio.run(prefill(broker.bootstrap, rows))
        total = sum(ends.values())
        say(f"  starting `pacsflow analytics` ({total:,} offsets to commit) ...")
        started_wall, started = time.time(), time.monotonic()
        sink = Service("analytics", env, folder / "sink.log").start()
        shown = started
        while (done := asyncio.run(committed(broker.bootstrap, ends))) < total:
            if not sink.alive():
                raise SystemExit(f"the sink exited: {sink.log_path.read_text()[-2000:]}")
            if time.monotonic() - shown >= 2:
                shown = time.monotonic()
                say(f"    {done:,} of {total:,} committed after {shown - started:.1f} s")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        (ready,) = sink.events("analytics_ready")
        ready_at = datetime.fromisoformat(str(ready["timestamp"]).replace("Z", "+00:00")).timestamp()
        after_ready = elapsed - (ready_at - started_wall)
        glob = f"{layout.table_dir(folder / 'var', IMAGES)}/*/*.parquet"
        with duckdb.connect(":memory:") as con:
            (stored,) = con.execute("SELECT count(*) FROM read_parquet(?)", [glob]).fetchone() or (0,)
        if stored < rows:
            raise SystemExit(f"only {stored} of {rows} rows in the files")
        say(f"    all committed after {elapsed:.1f} s ({after_ready:.1f} s after ready), {stored:,} rows")
        return {"seconds": elapsed, "rows/s": rows / elapsed, "rows/s after ready": rows / after_ready}
    finally:
        if sink is not None:
            sink.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    defaults = settings_module.load(clean_environment())
    say(
        f"analytics sink: {args.rows:,} dicom_image_queue records, "
        f"PACSFLOW_ANALYTICS_ROLL_S={defaults.analytics_roll_s:g}, "
        f"PACSFLOW_ANALYTICS_ROLL_ROWS={defaults.analytics_roll_rows}, "
        "Tansu (memory), session timeout 3 s"
    )
    results = {p: run(p, args.rows) for p in (1, 4)}
    say("")
    say("| partitions | rows | from start to last commit (s) | rows/s | rows/s after ready |")
    say("|---|---|---|---|---|")
    for partitions, figures in results.items():
        say(
            f"| {partitions} | {args.rows:,} | {figures['seconds']:.1f} | {figures['rows/s']:,.0f} "
            f"| {figures['rows/s after ready']:,.0f} |"
        )


if __name__ == "__main__":
    main()
