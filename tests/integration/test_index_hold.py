"""A database that cannot take writes for now holds the index's stream; nothing is dead-lettered.

Real parts: SCP, Tansu, the machine's PostgreSQL, a `pacsflow worker` process.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from pydicom.dataset import Dataset

from pipeline.stores.postgres import migrate
from tests.conftest import Scp, WorkerFactory, query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, Service, pacsflow, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


def rows(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"])


def send(scp: Scp, datasets: list[Dataset], folder: Path) -> None:
    result = storescu(scp.port, dicomdata.write_all(datasets, folder))
    assert result.returncode == 0, result.stderr


def dead_letters(broker: Broker, datasets: list[Dataset]) -> dict[str, str]:
    sops = {ds.SOPInstanceUID for ds in datasets}
    found = broker.read(
        "storage_dlq", 1, 3, where=lambda v: bool(v.get("event")) and v["event"]["SopInstanceUID"] in sops
    )
    return {json.loads(r.value)["event"]["SopInstanceUID"]: json.loads(r.value)["reason"] for r in found}


def held_on_database(worker: Service, times: int) -> bool:
    """The worker has logged its hold ``times`` times, or has dead-lettered something instead."""
    holds = [e for e in worker.events("index_retrying") if e.get("waiting_for") == "database"]
    return len(holds) >= times or bool(worker.events("event_dead_lettered"))


def status(worker: Service, dsn: str, broker: Broker) -> list[str]:
    result = pacsflow(
        "status",
        env={
            "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "PACSFLOW_DATABASE_URL": dsn,
            "PACSFLOW_DATA_DIR": worker.env["PACSFLOW_DATA_DIR"],
        },
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def set_read_only(dsn: str, on: bool) -> None:
    """New sessions of the database are read-only (SQLSTATE 25006 on writes), as on a standby."""
    name = dsn.rsplit("/", 1)[1]

    async def alter() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET default_transaction_read_only = off")  # this session's own
            await conn.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
            )
        finally:
            await conn.close()

    asyncio.run(alter())


def test_an_unmigrated_database_holds_the_stream_until_migrate(
    scp: Scp, broker: Broker, empty_database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 12)
    worker = start_worker(broker.bootstrap, empty_database, scp.storage_root)
    send(scp, datasets, tmp_path / "send")

    wait_for(lambda: held_on_database(worker, 2), 60, "the worker to hold on the missing tables")
    assert dead_letters(broker, datasets) == {}
    holds = [e for e in worker.events("index_retrying") if e.get("waiting_for") == "database"]
    assert "42P01" in str(holds[-1]["error"]), holds[-1]
    held = [line for line in status(worker, empty_database, broker) if line.startswith("index held")]
    assert len(held) == 1 and "waiting for database" in held[0] and "42P01" in held[0], held

    asyncio.run(migrate(empty_database))
    wait_for(lambda: rows(empty_database) == 12, 60, "every instance to be indexed once migrated")
    distinct = query(empty_database, "SELECT count(DISTINCT sop_uid) AS n FROM dicom_instance_meta")[0]["n"]
    assert distinct == 12
    counts = query(empty_database, "SELECT series_related_instances AS n FROM dicom_state_meta")
    assert [r["n"] for r in counts] == [12]
    assert dead_letters(broker, datasets) == {}
    wait_for(lambda: worker.events("index_resumed"), 30, "the worker to log that it flows again")
    assert not [line for line in status(worker, empty_database, broker) if line.startswith("index held")]
    assert worker.alive()


def test_a_read_only_database_holds_the_stream_until_it_takes_writes_again(
    scp: Scp, broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 12)
    set_read_only(database, True)
    worker = start_worker(broker.bootstrap, database, scp.storage_root)
    send(scp, datasets, tmp_path / "send")

    wait_for(lambda: held_on_database(worker, 2), 60, "the worker to hold on the read-only database")
    assert dead_letters(broker, datasets) == {}
    holds = [e for e in worker.events("index_retrying") if e.get("waiting_for") == "database"]
    assert "25006" in str(holds[-1]["error"]), holds[-1]
    assert rows(database) == 0

    # Sessions the worker opened while it was read-only stay read-only: it must open new ones.
    set_read_only(database, False)
    wait_for(lambda: rows(database) == 12, 60, "every instance to be indexed once writable")
    counts = query(database, "SELECT series_related_instances AS n FROM dicom_state_meta")
    assert [r["n"] for r in counts] == [12]
    assert dead_letters(broker, datasets) == {}
    assert worker.alive()


def test_a_storage_root_that_is_not_there_holds_the_stream_until_it_is(
    scp: Scp, broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """An unmounted volume is not a folder of missing files: nothing is dead-lettered meanwhile."""
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 6)
    mount = tmp_path / "mnt" / "storage"
    worker = start_worker(broker.bootstrap, database, mount)
    send(scp, datasets, tmp_path / "send")

    wait_for(
        lambda: (
            len([e for e in worker.events("index_retrying") if e.get("waiting_for") == "storage"]) >= 2
            or bool(worker.events("event_dead_lettered"))
        ),
        60,
        "the worker to hold on the storage",
    )
    assert dead_letters(broker, datasets) == {}
    holds = [e for e in worker.events("index_retrying") if e.get("waiting_for") == "storage"]
    assert "not there" in str(holds[-1]["error"]), holds[-1]
    assert rows(database) == 0

    mount.parent.mkdir()
    mount.symlink_to(scp.storage_root)  # the volume comes back
    wait_for(lambda: rows(database) == 6, 60, "every instance to be indexed once the storage is there")
    assert dead_letters(broker, datasets) == {}
    assert worker.alive()
