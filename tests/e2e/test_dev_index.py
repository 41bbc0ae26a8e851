"""`pacsflow dev` indexes what modalities send: rows in PostgreSQL, records for Doris."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from pathlib import Path

import pytest

from pipeline import topics
from tests.conftest import query
from tests.support import dicomdata
from tests.support.dev import start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.doris import routine_load_columns
from tests.support.services import free_port, read_topic, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk]


def test_three_studies_are_indexed_with_counts_and_doris_records(tmp_path: Path) -> None:
    require_dcmtk()
    dev = start_dev(tmp_path / "var", tmp_path / "dev.log", free_port(), free_port())
    try:
        dsn = re.search(r"PostgreSQL\s+(postgresql://\S+)", dev.text()).group(1)  # type: ignore[union-attr]
        run = uuid.uuid4().int % 10**12
        ct = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 100)
        mr = dicomdata.mr_series(uid(run, 2), uid(run, 2, 1), 20, rows=32, columns=32) + dicomdata.mr_series(
            uid(run, 2), uid(run, 2, 2), 15, rows=32, columns=32
        )
        for ds in mr[20:]:
            ds.SeriesNumber = 2
        multiframe = dicomdata.ct_series(uid(run, 3), uid(run, 3, 1), 1, frames=30)
        sent = ct + mr + multiframe
        files = dicomdata.write_all(sent, tmp_path / "send")
        result = storescu(dev.scp_port, files)
        assert result.returncode == 0, result.stderr

        def indexed() -> int:
            return int(query(dsn, "SELECT count(*) AS n FROM dicom_instance_meta")[0]["n"])

        wait_for(lambda: indexed() == len(sent), 30, f"{len(sent)} instance rows")
        series = {r["series_uid"]: r for r in query(dsn, "SELECT * FROM dicom_state_meta")}
        assert {k: r["series_related_instances"] for k, r in series.items()} == {
            uid(run, 1, 1): 100,
            uid(run, 2, 1): 20,
            uid(run, 2, 2): 15,
            uid(run, 3, 1): 1,
        }
        assert {k: r["modality"] for k, r in series.items()} == {
            uid(run, 1, 1): "CT",
            uid(run, 2, 1): "MR",
            uid(run, 2, 2): "MR",
            uid(run, 3, 1): "CT",
        }
        ct_row = series[uid(run, 1, 1)]
        assert (ct_row["patient_id"], ct_row["patient_name"], ct_row["accession_number"]) == (
            "PAT-CT",
            "Doe^Jane",
            "ACC1",
        )
        assert str(ct_row["study_date"]) == "2026-01-15" and ct_row["study_date_origin"] == "20260115"
        assert str(ct_row["study_time"]) == "10:15:00"
        frames = query(
            dsn,
            "SELECT number_of_frames, rows, columns FROM dicom_instance_meta WHERE sop_uid = $1",
            multiframe[0].SOPInstanceUID,
        )[0]
        assert tuple(frames) == (30, 64, 64)
        flagged = query(dsn, "SELECT count(*) AS n FROM dicom_json_meta")[0]["n"]
        assert flagged == 4  # one row per series for the metadata regeneration

        images = asyncio.run(read_topic(dev.bootstrap(), topics.DICOM_IMAGE_QUEUE, len(sent), 30))
        states = asyncio.run(read_topic(dev.bootstrap(), topics.DICOM_STATE_QUEUE, 4, 30))
        assert {json.loads(r.value)["sop_uid"] for r in images} == {ds.SOPInstanceUID for ds in sent}
        for record in images:
            assert list(json.loads(record.value)) == routine_load_columns("dicom_image_queue")
        latest = {}
        for record in sorted(states, key=lambda r: r.offset):
            value = json.loads(record.value)
            assert list(value) == routine_load_columns("dicom_state_queue")
            latest[value["series_uid"]] = value["series_related_instances"]
        assert latest[uid(run, 1, 1)] == 100
        image = next(
            json.loads(r.value) for r in images if json.loads(r.value)["sop_uid"] == ct[0].SOPInstanceUID
        )
        assert (image["width"], image["columns"], image["study_date_origin"]) == (64, 64, "2026-01-15")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", image["created_time"])  # DATETIME(3)

        # Re-sending a whole study changes no count.
        assert storescu(dev.scp_port, files[:100]).returncode == 0
        wait_for(
            lambda: (
                len(asyncio.run(read_topic(dev.bootstrap(), topics.DICOM_IMAGE_QUEUE, len(sent) + 100, 30)))
                >= len(sent) + 100
            ),
            60,
            "the re-sent study to be indexed",
        )
        assert indexed() == len(sent)
        again = query(
            dsn,
            "SELECT series_related_instances AS n FROM dicom_state_meta WHERE series_uid = $1",
            uid(run, 1, 1),
        )
        assert again[0]["n"] == 100
    finally:
        dev.process.send_signal(signal.SIGTERM)
        if dev.process.wait(60) is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
