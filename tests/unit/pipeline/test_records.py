"""Records serialise to exactly the columns the Routine Load jobs read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.models import (
    ConversionRecord,
    DeletionEvent,
    DicomImageMeta,
    DicomObjectMeta,
    DicomStateMeta,
    StorageEvent,
    WadoAccessLog,
    storage_queue_record,
)
from pipeline.models.formats import doris_date, doris_datetime, uid_hash
from tests.support.doris import routine_load_columns

ROOT = Path(__file__).resolve().parents[3]
SEED_MESSAGE_BODY = [
    "TransferSyntax",
    "SopInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "FileName",
    "FileSize",
    "FilePath",
]


def test_dicom_object_meta_is_the_log_queue_job_columns() -> None:
    assert list(DicomObjectMeta.field_names()) == routine_load_columns("log_queue")


def test_state_and_image_records_are_their_jobs_columns_but_what_doris_computes() -> None:
    assert list(DicomStateMeta.field_names()) == routine_load_columns("dicom_state_queue")
    assert list(DicomImageMeta.field_names()) == routine_load_columns("dicom_image_queue")
    assert routine_load_columns("dicom_state_queue", computed=True)[-1] == "updated_time"


def test_wado_access_log_is_its_jobs_columns() -> None:
    assert list(WadoAccessLog.field_names()) == routine_load_columns("wado_access_log")


def test_storage_event_carries_the_seed_message_body() -> None:
    fields = list(StorageEvent.field_names())
    assert fields[: len(SEED_MESSAGE_BODY)] == SEED_MESSAGE_BODY
    assert {"TenantID", "SopClassUID", "SourceAE", "SourceIP", "ReceivedTime", "TraceID", "NodeID"} <= set(
        fields
    )


def test_records_are_flat_json_without_faust_metadata() -> None:
    meta = DicomObjectMeta(
        trace_id="t",
        worker_node_id="n",
        tenant_id="default",
        patient_id="p",
        study_uid="1.2",
        series_uid="1.2.3",
        sop_uid="1.2.3.4",
        file_size=10,
        file_path="a/b",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        number_of_frames=None,
        created_time="2026-01-01 00:00:00",
        series_uid_hash="1",
        study_uid_hash="2",
        accession_number=None,
        target_ts=None,
        study_date=None,
        transfer_status="stored",
        source_ip="::1",
        source_ae="A",
    )
    decoded = json.loads(meta.dumps())
    assert list(decoded) == routine_load_columns("log_queue")
    assert "__faust" not in decoded


def test_doris_formats() -> None:
    assert doris_date("20260115") == "2026-01-15"
    assert doris_date("20261315") is None
    assert doris_date("") is None
    assert doris_date(None) is None
    assert doris_datetime(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == "2026-01-02 03:04:05"
    assert len(uid_hash("1.2.840.10008")) <= 20
    assert uid_hash("1.2.3") == uid_hash("1.2.3") != uid_hash("1.2.4")


def test_conversion_log_records_are_the_jobs_columns() -> None:
    assert list(ConversionRecord.field_names()) == routine_load_columns("conversion_log")


def test_doris_deletes_are_merged_by_the_deleted_column() -> None:
    for job in ("dicom_state_queue", "dicom_image_queue"):
        sql = (ROOT / "doris" / "routine_load" / "jobs" / f"{job}.sql").read_text()
        assert "WITH MERGE" in sql and "DELETE ON deleted = 1" in sql
        assert routine_load_columns(job)[-1] == "deleted"


def test_storage_queue_holds_stores_and_deletions_and_names_what_is_wrong() -> None:
    deletion = DeletionEvent(
        TenantID="default",
        StudyInstanceUID="1.2",
        SeriesInstanceUID=None,
        SopInstanceUID=None,
        Cutoff="2026-12-02T00:00:00+00:00",
        RequestedTime="2026-12-02T00:00:00.000000Z",
        TraceID="t",
        NodeID="n",
        SourceIP="127.0.0.1",
    )
    assert json.loads(deletion.dumps())["Action"] == "delete"
    assert storage_queue_record(deletion.dumps()) == deletion
    with pytest.raises(ValueError, match="not a StorageEvent"):
        storage_queue_record(b'{"Action": "erase", "TenantID": "default"}')
