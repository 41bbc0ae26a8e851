"""The index agent with real parts: SCP, Tansu, PostgreSQL, `pacsflow worker` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from analytics import query as analytics_query
from tests.conftest import Scp, ScpFactory, WorkerFactory, query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, Service, pacsflow, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


def rows(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"])


def series_counts(dsn: str) -> dict[str, int]:
    found = query(dsn, "SELECT series_uid, series_related_instances FROM dicom_state_meta")
    return {r["series_uid"]: r["series_related_instances"] for r in found}


def send(scp: Scp, tmp_path: Path, datasets: list, name: str = "send") -> list[Path]:
    files = dicomdata.write_all(datasets, tmp_path / name)
    result = storescu(scp.port, files)
    assert result.returncode == 0, result.stderr
    return files


def dead_letters(broker: Broker, sops: set[str], expected: int, timeout: float = 20) -> dict[str, str]:
    found = broker.read(
        "storage_dlq",
        expected,
        timeout,
        where=lambda v: bool(v.get("event")) and v["event"]["SopInstanceUID"] in sops,
    )
    return {json.loads(r.value)["event"]["SopInstanceUID"]: json.loads(r.value)["reason"] for r in found}


def run_id() -> int:
    return uuid.uuid4().int % 10**12


def analytics_keys(data_dir: Path, table: str, key: str, studies: list[str]) -> tuple[int, int]:
    """Rows of the analytics table for ``studies`` and their distinct ``key``s, as Doris holds them."""
    with analytics_query.connect(data_dir) as con:
        found = con.execute(
            f"SELECT count(*), count(DISTINCT {key}) FROM {table} WHERE study_uid IN (SELECT unnest(?))",  # noqa: S608
            [studies],
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1])


def series_in_analytics(data_dir: Path, studies: list[str]) -> dict[str, int]:
    with analytics_query.connect(data_dir) as con:
        found = con.execute(
            "SELECT series_uid, series_related_instances FROM dicom_state_meta "
            "WHERE study_uid IN (SELECT unnest(?))",
            [studies],
        ).fetchall()
    return {str(series): int(count) for series, count in found}


def test_a_killed_worker_restarts_and_every_instance_is_indexed_once(
    scp: Scp, broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    run = run_id()
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 150) + dicomdata.mr_series(
        uid(run, 2), uid(run, 2, 1), 150, rows=32, columns=32
    )
    files = dicomdata.write_all(datasets, tmp_path / "send")
    # The analytics sink reads what the killed worker published, some of it twice.
    sink_dir = tmp_path / "analytics"
    sink_env = {
        "PACSFLOW_DATA_DIR": str(sink_dir),
        "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "PACSFLOW_KAFKA_SESSION_TIMEOUT_S": "3",
        "PACSFLOW_KAFKA_HEARTBEAT_INTERVAL_S": "0.5",
        "PACSFLOW_ANALYTICS_ROLL_S": "0.5",
    }
    sink = Service("analytics", sink_env, tmp_path / "sink.log").start()
    wait_for(lambda: sink.events("analytics_ready") or not sink.alive(), 60, "the analytics sink to start")
    assert sink.alive(), sink.log_path.read_text()[-3000:]
    worker = start_worker(broker.bootstrap, database, scp.storage_root)
    sender = subprocess.Popen(
        [str(Path("/usr/bin/storescu")), "-aec", "PACSFLOW", "127.0.0.1", str(scp.port), *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: rows(database) > 20, 60, "the first instances to be indexed")
    worker.process.send_signal(signal.SIGKILL)  # mid-stream, no chance to commit
    worker.process.wait()
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    start_worker(broker.bootstrap, database, scp.storage_root)
    wait_for(lambda: rows(database) == 300, 90, "all 300 instances to be indexed")
    distinct = query(database, "SELECT count(DISTINCT sop_uid) AS n FROM dicom_instance_meta")[0]["n"]
    assert distinct == 300
    assert series_counts(database) == {uid(run, 1, 1): 150, uid(run, 2, 1): 150}
    sops = {ds.SOPInstanceUID for ds in datasets}
    assert dead_letters(broker, sops, 1, timeout=2) == {}

    # Doris's tables, as the sink holds them: each instance and each series once, none missing.
    studies = [uid(run, 1), uid(run, 2)]
    try:
        wait_for(
            lambda: analytics_keys(sink_dir, "dicom_image_meta", "sop_uid", studies)[1] == 300,
            60,
            "the analytics sink to hold all 300 instances",
        )
        assert analytics_keys(sink_dir, "dicom_image_meta", "sop_uid", studies) == (300, 300)
        wait_for(
            lambda: analytics_keys(sink_dir, "dicom_object_meta", "sop_uid", studies) == (300, 300),
            30,
            "all 300 received objects in dicom_object_meta",
        )
        # The index publishes a series' running count per batch: wait for the last one.
        wait_for(
            lambda: series_in_analytics(sink_dir, studies) == {uid(run, 1, 1): 150, uid(run, 2, 1): 150},
            30,
            "both series in dicom_state_meta with their 150 instances",
        )
        assert analytics_keys(sink_dir, "dicom_state_meta", "series_uid", studies) == (2, 2)
        assert sink.alive(), sink.log_path.read_text()[-3000:]
    finally:
        sink.stop()


def test_a_corrupt_file_and_a_deleted_file_are_dead_lettered_and_the_rest_flows(
    scp: Scp, broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    run = run_id()
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 6)
    send(scp, tmp_path, datasets)  # no worker yet: the events wait on the broker
    stored = {
        ds.SOPInstanceUID: scp.storage_root
        / "default"
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
        for ds in datasets
    }
    corrupt, deleted = datasets[1].SOPInstanceUID, datasets[2].SOPInstanceUID
    stored[corrupt].write_bytes(os.urandom(4096))
    stored[deleted].unlink()

    start_worker(broker.bootstrap, database, scp.storage_root)
    wait_for(lambda: rows(database) == 4, 60, "the four good instances to be indexed")

    reasons = dead_letters(broker, {corrupt, deleted}, 2)
    assert "file missing" in reasons[deleted]
    assert "DICM" in reasons[corrupt] or "DICOM" in reasons[corrupt]
    indexed = {r["sop_uid"] for r in query(database, "SELECT sop_uid FROM dicom_instance_meta")}
    assert indexed == set(stored) - {corrupt, deleted}
    assert series_counts(database) == {uid(run, 1, 1): 4}

    status = pacsflow("status", env={"PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap})
    assert status.returncode == 0, status.stderr
    assert "storage_queue" in status.stdout
    dlq_line = next(line for line in status.stdout.splitlines() if line.startswith("dead letters"))
    assert int(dlq_line.rsplit(" ", 1)[1]) >= 2


def test_two_workers_split_the_partitions_and_one_takes_over(
    scp: Scp, broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    first = start_worker(broker.bootstrap, database, scp.storage_root)
    second = start_worker(broker.bootstrap, database, scp.storage_root, wait=False)

    def split() -> bool:
        a, b = first.events("partitions_assigned"), second.events("partitions_assigned")
        if not a or not b:
            return False
        mine, theirs = set(a[-1]["partitions"]), set(b[-1]["partitions"])  # type: ignore[arg-type]
        return bool(mine) and bool(theirs) and not mine & theirs and mine | theirs == {0, 1, 2, 3}

    wait_for(split, 60, "the two workers to share the 4 partitions")
    run = run_id()
    datasets = [ds for n in range(12) for ds in dicomdata.ct_series(uid(run, n), uid(run, n, 1), 5)]
    send(scp, tmp_path, datasets)
    wait_for(lambda: rows(database) == 60, 60, "60 instances to be indexed")
    by_first = {p for e in first.events("batch_indexed") for p in e["partitions"]}  # type: ignore[attr-defined]
    by_second = {p for e in second.events("batch_indexed") for p in e["partitions"]}  # type: ignore[attr-defined]
    assert by_first and by_second and not by_first & by_second

    second.stop()
    wait_for(
        lambda: set(first.events("partitions_assigned")[-1]["partitions"]) == {0, 1, 2, 3},  # type: ignore[arg-type]
        60,
        "the remaining worker to take every partition",
    )
    more = [ds for n in range(12, 20) for ds in dicomdata.ct_series(uid(run, n), uid(run, n, 1), 5)]
    send(scp, tmp_path, more, "more")
    wait_for(lambda: rows(database) == 100, 60, "the rest to be indexed by the remaining worker")


def test_reconcile_brings_the_index_back_after_the_broker_lost_everything(
    start_scp: ScpFactory, own_broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    broker = own_broker
    scp = start_scp(broker.bootstrap)
    run = run_id()
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 20)
    send(scp, tmp_path, datasets)
    sops = {ds.SOPInstanceUID for ds in datasets}
    # On the broker, not in the outbox: the broker's restart is what loses them.
    assert len(broker.read("storage_queue", 20, where=lambda v: v["SopInstanceUID"] in sops)) == 20
    broker.stop()  # memory only: the 20 unconsumed events are gone
    broker.start()
    start_worker(broker.bootstrap, database, scp.storage_root)
    assert rows(database) == 0
    env = {
        "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "PACSFLOW_DATABASE_URL": database,
        "PACSFLOW_DATA_DIR": str(tmp_path / "reconcile"),
        "PACSFLOW_STORAGE_ROOT": str(scp.storage_root),
    }
    result = pacsflow("reconcile", env=env)
    assert result.returncode == 0, result.stderr
    assert "re-published (file not indexed): 20" in result.stdout
    wait_for(lambda: rows(database) == 20, 60, "reconciled instances to be indexed")
    assert series_counts(database) == {uid(run, 1, 1): 20}

    gone = scp.storage_root / "default" / uid(run, 1) / uid(run, 1, 1) / f"{datasets[0].SOPInstanceUID}.dcm"
    gone.unlink()
    again = pacsflow("reconcile", env=env)
    assert "re-published (file not indexed): 0" in again.stdout
    assert "rows whose file is gone: 1" in again.stdout
    assert datasets[0].SOPInstanceUID in again.stdout
