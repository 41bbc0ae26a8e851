"""`pacsflow dev` as a user runs it: one command, real children, real peers, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import topics
from tests.support import dicomdata
from tests.support.dev import Dev, start_dev
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import c_echo, echoscu, require_dcmtk, storescu
from tests.support.services import free_port, process_alive, read_topic, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk]


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    require_dcmtk()
    running = start_dev(tmp_path / "var", tmp_path / "dev.log", free_port(), free_port())
    yield running
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()


def test_dev_brings_everything_up_stores_heals_and_stops_in_reverse(dev: Dev, tmp_path: Path) -> None:
    banner = dev.text()
    assert f"127.0.0.1:{dev.scp_port}  AE title PACSFLOW" in banner
    assert f"http://127.0.0.1:{dev.http_port}/dicomweb" in banner
    assert f"viewer (OHIF)            http://127.0.0.1:{dev.http_port}/\n" in banner
    assert str(dev.data_dir / "storage") in banner
    assert "Ctrl-C" in banner
    started = [e["child"] for e in dev.events("child_ready")]
    # Both SCP processes are the supervisor's own children: no process that only supervises.
    assert started == ["broker", "postgres", "scp-0", "scp-1", "worker", "web", "analytics"]

    with urllib.request.urlopen(f"http://127.0.0.1:{dev.http_port}/health", timeout=5) as response:
        assert response.status == 200
        assert json.load(response)["status"] == "ok"

    assert echoscu(dev.scp_port).returncode == 0
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    source = dicomdata.write(ds, tmp_path / "one.dcm")
    result = storescu(dev.scp_port, [source])
    assert result.returncode == 0, result.stderr
    stored = (
        dev.data_dir
        / "storage"
        / "default"
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    assert dataset_bytes(stored) == dataset_bytes(source)

    records = asyncio.run(read_topic(dev.bootstrap(), topics.STORAGE_QUEUE, 1, 30))
    assert [json.loads(r.value)["SopInstanceUID"] for r in records] == [ds.SOPInstanceUID]
    partitions = asyncio.run(_partitions(dev.bootstrap()))
    assert partitions == {name: 4 for name in topics.ALL}

    # A child killed outright is restarted by the supervisor.
    scp_pid = dev.child_pids()["dev/scp-0"]
    os.kill(scp_pid, signal.SIGKILL)
    wait_for(lambda: dev.events("child_restarted"), 30, "the SCP to be restarted")
    assert dev.child_pids()["dev/scp-0"] != scp_pid
    wait_for(lambda: c_echo(dev.scp_port), 20, "the restarted SCP to answer")
    again = dicomdata.write(dicomdata.ct_series(uid(run, 2), uid(run, 2, 1), 1)[0], tmp_path / "two.dcm")
    assert storescu(dev.scp_port, [again]).returncode == 0

    # Ctrl-C: children stop in reverse order, nothing is left running.
    pids = dev.child_pids(service=None)
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(60) == 0
    stopping = [e["child"] for e in dev.events("child_stopping")]
    assert stopping == ["analytics", "web", "worker", "scp-1", "scp-0", "postgres", "broker"]
    assert not [name for name, pid in pids.items() if process_alive(pid)]


def test_data_is_kept_across_restarts_and_no_child_outlives_a_killed_supervisor(tmp_path: Path) -> None:
    require_dcmtk()
    data_dir, scp_port, http_port = tmp_path / "var", free_port(), free_port()
    first = start_dev(data_dir, tmp_path / "first.log", scp_port, http_port)
    run = uuid.uuid4().int % 10**12
    source = dicomdata.write(dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0], tmp_path / "a.dcm")
    assert storescu(scp_port, [source]).returncode == 0
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(60) == 0

    second = start_dev(data_dir, tmp_path / "second.log", scp_port, http_port)
    pids: dict[str, int] = {}
    try:
        assert "initdb" not in second.text()
        assert len([p for p in (data_dir / "storage").rglob("*.dcm")]) == 1
        pids = second.child_pids(service=None)
        second.process.kill()  # no chance to stop its children: they must not outlive it
        second.process.wait()
        wait_for(
            lambda: not [n for n, pid in pids.items() if process_alive(pid)],
            # The worker's own stop is bounded by STOP_GRACE_S (15 s); PostgreSQL waits for it.
            40,
            f"children {pids} to exit after their supervisor was killed",
        )
    finally:
        if second.process.poll() is None:
            os.killpg(second.process.pid, signal.SIGKILL)
        # A failed check leaves no orphan behind to slow the tests after it.
        for pid in pids.values():
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def _partitions(bootstrap: str) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics.ALL))
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
