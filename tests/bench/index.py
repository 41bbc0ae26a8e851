"""`make bench`: the index pipeline. Indexed instances/s with 1 and 2 workers, ingest-to-indexed latency.

Throughput: N instances (20 studies, spread over the 4 partitions) are stored with no worker
running; then 1 (or 2) `pacsflow worker` start, and the rate is N over the span from the first to the
last row's ``indexed_time`` (group joining is not counted). Latency: with a worker already running,
instances are sent on one association; per instance, ``indexed_time - received_time``.
PostgreSQL is the machine's (a database of the run's own), the broker a Tansu on loopback.

    python -m tests.bench.index [--instances 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from pipeline.stores.postgres import migrate
from tests.support import dicomdata
from tests.support.dimse import c_echo
from tests.support.services import DCMTK, Broker, Service, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "index"
RESULTS = Path(__file__).resolve().parent / "results"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def say(message: str) -> None:
    print(message, flush=True)


def make_data(count: int, tag: str, run: int) -> list[Path]:
    folder = WORK / "data" / tag
    shutil.rmtree(folder, ignore_errors=True)
    per_study = max(1, count // 20)
    datasets = [
        ds
        for study in range(20)
        for ds in dicomdata.ct_series(dicomdata.uid(run, study), dicomdata.uid(run, study, 1), per_study)
    ][:count]
    return dicomdata.write_all(datasets, folder)


async def sql(dsn: str, statement: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(statement))
    finally:
        await conn.close()


def send(port: int, files: list[Path], associations: int) -> None:
    groups = [files[i::associations] for i in range(associations)]
    senders = [
        subprocess.Popen(
            [str(DCMTK / "storescu"), "-aec", "PACSFLOW", "127.0.0.1", str(port), *map(str, g)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for g in groups
    ]
    for sender in senders:
        if sender.wait(600) != 0:
            raise SystemExit("storescu failed")


class Stack:
    """A broker, a database, an SCP; workers on demand."""

    def __init__(self, name: str) -> None:
        self.folder = WORK / name
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.database = f"pacsflow_bench_{uuid.uuid4().hex[:8]}"
        self.dsn = f"{POSTGRES}/{self.database}"
        self.broker = Broker(self.folder / "tansu.log").start()
        asyncio.run(sql(f"{POSTGRES}/postgres", f'CREATE DATABASE "{self.database}"'))
        asyncio.run(migrate(self.dsn))
        self.port = free_port()
        self.env = {
            "PACSFLOW_DATA_DIR": str(self.folder / "var"),
            "PACSFLOW_STORAGE_ROOT": str(self.folder / "var" / "storage"),  # shared by SCP and workers
            "PACSFLOW_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "PACSFLOW_DATABASE_URL": self.dsn,
            "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
            "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
            "PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05",  # as `pacsflow dev` runs it on the embedded broker
            "PACSFLOW_LOG_LEVEL": "warning",
        }
        self.scp = Service("scp", {**self.env, "PACSFLOW_SCP_PORT": str(self.port)}, self.folder / "scp.log")
        self.scp.start()
        wait_for(lambda: c_echo(self.port), 30, "the SCP")
        self.workers: list[Service] = []

    def start_workers(self, count: int) -> None:
        for n in range(count):
            worker = Service(
                "worker",
                {
                    **self.env,
                    "PACSFLOW_DATA_DIR": str(self.folder / f"w{n}"),
                    "PACSFLOW_NODE_ID": f"bench-{n}",
                },
                self.folder / f"worker{n}.log",
            )
            self.workers.append(worker.start())

    def indexed(self) -> int:
        return int(asyncio.run(sql(self.dsn, "SELECT count(*) AS n FROM dicom_instance_meta"))[0]["n"])

    def close(self) -> None:
        for service in [*self.workers, self.scp]:
            service.stop()
        self.broker.stop()
        asyncio.run(sql(f"{POSTGRES}/postgres", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))


def throughput(workers: int, count: int) -> float:
    stack = Stack(f"throughput-{workers}")
    try:
        files = make_data(count, f"throughput-{workers}", uuid.uuid4().int % 10**9)
        say(f"  storing {count} instances with no worker running ...")
        send(stack.port, files, 4)
        say(f"  starting {workers} worker(s) ...")
        stack.start_workers(workers)
        wait_for(lambda: stack.indexed() == count, 300, f"{count} instances to be indexed", interval=0.5)
        span = asyncio.run(
            sql(
                stack.dsn,
                "SELECT extract(epoch FROM max(indexed_time) - min(indexed_time)) AS s "
                "FROM dicom_instance_meta",
            )
        )[0]["s"]
        rate = count / float(span)
        say(
            f"  {workers} worker(s): {count} instances indexed in {float(span):.2f} s = "
            f"{rate:.0f} instances/s"
        )
        return rate
    finally:
        stack.close()


def latency(count: int) -> tuple[float, float]:
    stack = Stack("latency")
    try:
        stack.start_workers(1)
        warmup = make_data(20, "latency-warmup", uuid.uuid4().int % 10**9)
        send(stack.port, warmup, 1)
        wait_for(lambda: stack.indexed() == 20, 120, "the worker to be indexing", interval=0.5)
        files = make_data(count, "latency", uuid.uuid4().int % 10**9)
        send(stack.port, files, 1)
        wait_for(lambda: stack.indexed() == count + 20, 120, "all to be indexed", interval=0.2)
        rows = asyncio.run(
            sql(
                stack.dsn,
                "SELECT extract(epoch FROM indexed_time - received_time) AS s "
                "FROM dicom_instance_meta ORDER BY received_time OFFSET 20",
            )
        )
        seconds = sorted(float(r["s"]) for r in rows)
        p50 = statistics.median(seconds)
        p99 = seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))]
        say(
            f"  ingest -> indexed, {count} instances on one association: p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms"
        )
        return p50, p99
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=2000, help="instances per throughput run")
    parser.add_argument("--latency-instances", type=int, default=300)
    args = parser.parse_args()
    say(
        f"pacsflow index benchmark: {args.instances} instances, 1 and 2 workers; latency over "
        f"{args.latency_instances}"
    )
    one = throughput(1, args.instances)
    two = throughput(2, args.instances)
    p50, p99 = latency(args.latency_instances)
    summary = {
        "instances": args.instances,
        "indexed_per_s_1_worker": round(one),
        "indexed_per_s_2_workers": round(two),
        "scaling_2_over_1": round(two / one, 2),
        "ingest_to_indexed_p50_ms": round(p50 * 1000),
        "ingest_to_indexed_p99_ms": round(p99 * 1000),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"index-{summary['when'].replace(':', '')}.json"
    out.write_text(json.dumps(summary, indent=2))
    say("")
    say("| metric | pacsflow |")
    say("|---|---|")
    say(f"| indexed instances/s, 1 worker | {summary['indexed_per_s_1_worker']} |")
    say(
        f"| indexed instances/s, 2 workers | {summary['indexed_per_s_2_workers']} "
        f"({summary['scaling_2_over_1']}x) |"
    )
    say(
        f"| ingest -> indexed, p50 / p99 | {summary['ingest_to_indexed_p50_ms']} ms / "
        f"{summary['ingest_to_indexed_p99_ms']} ms |"
    )
    say(f"\n(results in {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
