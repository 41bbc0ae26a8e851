"""dcmtk's storescu sends real series to a real `pacsflow scp`; files and events are checked exactly."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from pipeline.models.formats import uid_hash
from pipeline.topics import study_key
from tests.conftest import Scp, ScpFactory
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import echoscu, require_dcmtk, storescu
from tests.support.services import Broker

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


def stored_path(scp: Scp, tenant: str, study: str, series: str, sop: str) -> Path:
    return scp.storage_root / tenant / study / series / f"{sop}.dcm"


def by_sop(records: list, field: str = "SopInstanceUID") -> dict[str, tuple[object, dict]]:
    return {json.loads(r.value)[field]: (r, json.loads(r.value)) for r in records}


def test_echoscu_succeeds(scp: Scp) -> None:
    require_dcmtk()
    result = echoscu(scp.port)
    assert result.returncode == 0, result.stderr


def test_storescu_ct_and_mr_series_land_at_the_seed_path_with_exact_events(
    scp: Scp, broker: Broker, tmp_path: Path
) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12  # topics are shared by the session's tests
    ct_study, mr_study = uid(run, 1), uid(run, 2)
    ct = dicomdata.ct_series(ct_study, uid(run, 1, 1), 24)
    mr = dicomdata.mr_series(mr_study, uid(run, 2, 1), 12, rows=32, columns=32)
    files = dicomdata.write_all(ct + mr, tmp_path / "send")
    before = datetime.now(UTC)

    result = storescu(scp.port, files)
    assert result.returncode == 0, result.stderr

    sent = {ds.SOPInstanceUID: (ds, path) for ds, path in zip(ct + mr, files, strict=True)}
    for sop, (ds, source) in sent.items():
        path = stored_path(scp, "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, sop)
        assert path.is_file(), f"{sop} is not at {path}"
        assert dataset_bytes(path) == dataset_bytes(source), f"{sop}: stored dataset differs"
    assert not [p for p in scp.storage_root.rglob("*.tmp")], "temporary files were left behind"

    storage = broker.read("storage_queue", len(sent), where=lambda v: v["SopInstanceUID"] in sent)
    assert len(storage) == len(sent), "one storage event per instance, no more, no less"
    objects = {
        json.loads(r.value)["sop_uid"]: json.loads(r.value)
        for r in broker.read("log_queue", len(sent), where=lambda v: v["sop_uid"] in sent)
    }
    assert set(objects) == set(sent)

    for record in storage:
        event = json.loads(record.value)
        ds, _ = sent[event["SopInstanceUID"]]
        path = stored_path(scp, "default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        relative = path.relative_to(scp.storage_root).as_posix()
        assert record.key == study_key(ds.StudyInstanceUID)
        received = datetime.fromisoformat(event.pop("ReceivedTime"))
        assert before - timedelta(seconds=1) <= received <= datetime.now(UTC)
        trace_id = event.pop("TraceID")
        assert str(uuid.UUID(trace_id)) == trace_id
        assert event == {
            "TransferSyntax": ExplicitVRLittleEndian,
            "SopInstanceUID": ds.SOPInstanceUID,
            "StudyInstanceUID": ds.StudyInstanceUID,
            "SeriesInstanceUID": ds.SeriesInstanceUID,
            "PatientID": ds.PatientID,
            "FileName": f"{ds.SOPInstanceUID}.dcm",
            "FileSize": path.stat().st_size,
            "FilePath": relative,
            "TenantID": "default",
            "SopClassUID": CTImageStorage if ds.Modality == "CT" else MRImageStorage,
            "SourceAE": "TESTSCU",
            "SourceIP": "127.0.0.1",
            "NodeID": scp.node_id,
        }
        meta = objects[ds.SOPInstanceUID]
        created = meta.pop("created_time")
        # DATETIME(3): the receipt, to the millisecond.
        assert len(created) == len("YYYY-MM-DD HH:MM:SS.fff")
        assert datetime.fromisoformat(created).replace(tzinfo=UTC) >= before - timedelta(milliseconds=1)
        assert meta == {
            "trace_id": trace_id,
            "worker_node_id": scp.node_id,
            "tenant_id": "default",
            "patient_id": ds.PatientID,
            "study_uid": ds.StudyInstanceUID,
            "series_uid": ds.SeriesInstanceUID,
            "sop_uid": ds.SOPInstanceUID,
            "file_size": path.stat().st_size,
            "file_path": relative,
            "transfer_syntax_uid": ExplicitVRLittleEndian,
            "number_of_frames": 1,
            "series_uid_hash": uid_hash(ds.SeriesInstanceUID),
            "study_uid_hash": uid_hash(ds.StudyInstanceUID),
            "accession_number": "ACC1",
            "target_ts": None,
            "study_date": "2026-01-15",
            "transfer_status": "stored",
            "source_ip": "127.0.0.1",
            "source_ae": "TESTSCU",
        }

    # One study, one partition, in the order sent.
    for study in (ct_study, mr_study):
        mine = [r for r in storage if json.loads(r.value)["StudyInstanceUID"] == study]
        assert len({r.partition for r in mine}) == 1
        numbers = [
            int(json.loads(r.value)["SopInstanceUID"].rsplit(".", 1)[1])
            for r in sorted(mine, key=lambda r: r.offset)
        ]
        assert numbers == sorted(numbers)


def test_every_line_about_an_instance_names_tenant_trace_and_sop(scp: Scp, tmp_path: Path) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    datasets = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 3)
    assert storescu(scp.port, dicomdata.write_all(datasets, tmp_path)).returncode == 0
    lines = [
        line
        for line in scp.service.events("instance_stored")
        if line.get("sop_instance_uid") in {ds.SOPInstanceUID for ds in datasets}
    ]
    assert len(lines) == 3
    for line in lines:
        assert line["tenant"] == "default"
        assert uuid.UUID(str(line["trace_id"]))
        assert line["level"] == "info"


def test_resending_an_instance_replaces_it_atomically(scp: Scp, broker: Broker, tmp_path: Path) -> None:
    require_dcmtk()
    run = uuid.uuid4().int % 10**12
    first = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    second = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    second.PatientName = "Changed^Name"
    a = dicomdata.write(first, tmp_path / "a.dcm")
    b = dicomdata.write(second, tmp_path / "b.dcm")

    assert storescu(scp.port, [a]).returncode == 0
    assert storescu(scp.port, [b]).returncode == 0

    folder = scp.storage_root / "default" / first.StudyInstanceUID / first.SeriesInstanceUID
    assert [p.name for p in folder.iterdir()] == [f"{first.SOPInstanceUID}.dcm"]
    assert dataset_bytes(folder / f"{first.SOPInstanceUID}.dcm") == dataset_bytes(b)


def test_called_ae_title_selects_the_tenant(start_scp: ScpFactory, broker: Broker, tmp_path: Path) -> None:
    require_dcmtk()
    scp = start_scp(broker.bootstrap, scp_tenants="CT1=hospital_a,MR2=hospital_b")
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)[0]
    path = dicomdata.write(ds, tmp_path / "one.dcm")

    assert storescu(scp.port, [path], called="CT1").returncode == 0
    assert storescu(scp.port, [path], called="ELSEWHERE").returncode == 0

    for tenant in ("hospital_a", "default"):
        assert stored_path(
            scp, tenant, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        ).is_file()
    assert not (scp.storage_root / "hospital_b").exists()
    tenants = sorted(
        json.loads(r.value)["TenantID"]
        for r in broker.read("storage_queue", 2, where=lambda v: v["SopInstanceUID"] == ds.SOPInstanceUID)
    )
    assert tenants == ["default", "hospital_a"]
