"""PostgreSQL stopped for 10 s mid-stream: every instance is indexed, none dead-lettered."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dev import postgres
from pipeline.stores.postgres import migrate
from tests.conftest import Scp, WorkerFactory, query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, PostgresServer, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk, pytest.mark.slow]


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path).start()
    asyncio.run(migrate(postgres.dsn(server.port)))
    yield server
    server.stop()


def test_database_away_for_ten_seconds_loses_nothing(
    scp: Scp, broker: Broker, own_postgres: PostgresServer, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    require_dcmtk()
    dsn = postgres.dsn(own_postgres.port)
    worker = start_worker(broker.bootstrap, dsn, scp.storage_root)
    run = uuid.uuid4().int % 10**12
    first = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 40)
    second = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 80)[40:]
    assert storescu(scp.port, dicomdata.write_all(first, tmp_path / "a")).returncode == 0
    wait_for(lambda: query(dsn, "SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"] == 40, 60, "40 rows")

    own_postgres.stop()
    stopped = time.monotonic()
    assert storescu(scp.port, dicomdata.write_all(second, tmp_path / "b")).returncode == 0
    wait_for(lambda: worker.events("index_retrying"), 30, "the worker to notice the database is away")
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    own_postgres.start()

    wait_for(lambda: query(dsn, "SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"] == 80, 90, "80 rows")
    counts = query(dsn, "SELECT series_related_instances AS n FROM dicom_state_meta")
    assert [r["n"] for r in counts] == [80]
    sops = {ds.SOPInstanceUID for ds in first + second}
    dead = broker.read(
        "storage_dlq", 1, 3, where=lambda v: bool(v.get("event")) and v["event"]["SopInstanceUID"] in sops
    )
    assert [json.loads(r.value)["reason"] for r in dead] == []
    assert worker.alive()
