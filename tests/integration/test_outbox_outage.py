"""A broker outage never fails a store and never loses an event."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import ScpFactory
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, process_alive, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


def _twenty_instances(tmp_path: Path) -> tuple[list, list[Path]]:
    run = uuid.uuid4().int % 10**12
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 12) + dicomdata.mr_series(
        uid(run, 2), uid(run, 2, 1), 8, rows=32, columns=32
    )
    return datasets, dicomdata.write_all(datasets, tmp_path / "send")


def _assert_all_published_in_order(broker: Broker, datasets: list) -> None:
    sops = {ds.SOPInstanceUID for ds in datasets}
    records = broker.read("storage_queue", len(sops), timeout=60, where=lambda v: v["SopInstanceUID"] in sops)
    assert {json.loads(r.value)["SopInstanceUID"] for r in records} == sops, "an event was lost"
    for study in {ds.StudyInstanceUID for ds in datasets}:
        sent = [ds.SOPInstanceUID for ds in datasets if ds.StudyInstanceUID == study]
        mine = sorted(
            (r for r in records if json.loads(r.value)["StudyInstanceUID"] == study), key=lambda r: r.offset
        )
        assert len({r.partition for r in mine}) == 1
        published = list(dict.fromkeys(json.loads(r.value)["SopInstanceUID"] for r in mine))
        assert published == sent, "events of a study must be published in the order stored"
    objects = broker.read("log_queue", len(sops), timeout=30, where=lambda v: v["sop_uid"] in sops)
    assert {json.loads(r.value)["sop_uid"] for r in objects} == sops


def test_stores_succeed_while_the_broker_is_down_and_events_follow(
    start_scp: ScpFactory, own_broker: Broker, tmp_path: Path
) -> None:
    require_dcmtk()
    broker = own_broker
    scp = start_scp(broker.bootstrap)
    broker.stop()  # memory storage: topics and offsets are gone with it
    datasets, files = _twenty_instances(tmp_path)

    result = storescu(scp.port, files)

    assert result.returncode == 0, result.stderr
    assert len(scp.files()) == 20
    wait_for(lambda: scp.service.events("outbox_publish_failed"), 20, "the publisher to notice")
    broker.start()  # same port, empty
    _assert_all_published_in_order(broker, datasets)
    assert broker.partitions("storage_queue") == 4, "topics are re-created with their partitions"
    assert scp.service.alive()


def test_stores_succeed_while_the_broker_hangs_and_events_follow(
    start_scp: ScpFactory, own_broker: Broker, tmp_path: Path
) -> None:
    require_dcmtk()
    broker = own_broker
    scp = start_scp(broker.bootstrap)
    broker.pause()  # accepts connections, answers nothing
    datasets, files = _twenty_instances(tmp_path)

    result = storescu(scp.port, files, timeout=60)

    assert result.returncode == 0, result.stderr
    assert len(scp.files()) == 20
    broker.resume()
    _assert_all_published_in_order(broker, datasets)


def test_events_spooled_before_a_restart_are_published_after_it(
    start_scp: ScpFactory, own_broker: Broker, tmp_path: Path
) -> None:
    require_dcmtk()
    broker = own_broker
    scp = start_scp(broker.bootstrap)
    broker.stop()
    datasets, files = _twenty_instances(tmp_path)
    assert storescu(scp.port, files).returncode == 0
    replicas = [int(e["pid"]) for e in scp.service.events("child_started")]
    scp.service.process.kill()  # no chance to flush: the outbox on disk is all there is
    scp.service.process.wait()
    # Its SCP processes end with it (a parent-death signal), as systemd would end them before a
    # restart: until then they hold the port, which a new start would find taken.
    wait_for(lambda: not any(process_alive(pid) for pid in replicas), 30, "the replicas to end")
    broker.start()
    scp.service.start()
    wait_for(
        lambda: scp.service.events("scp_stopped") or len(scp.service.events("scp_listening")) > 1,
        30,
        "the SCP to start again",
    )
    _assert_all_published_in_order(broker, datasets)
