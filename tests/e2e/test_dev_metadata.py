"""`pacsflow dev` regenerates series and study metadata that is exactly pydicom's view of the files."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from pipeline.models import TenantId, Uid
from pipeline.regeneration import MetadataBuilder
from pipeline.stores.files import StorageLayout
from tests.conftest import query
from tests.support import dicomdata
from tests.support.dev import start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.metadata import THRESHOLD, expected_instance, number_of, read_metadata, sop_of
from tests.support.services import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk]

WINDOW_S = 2.0  # PACSFLOW_METADATA_WINDOW_S's default, which `pacsflow dev` runs with


def on_demand(dsn: str, root: Path, http_port: int, study: str, series: str | None) -> bytes | None:
    async def build() -> bytes | None:
        builder = MetadataBuilder(
            StorageLayout(root), f"http://127.0.0.1:{http_port}", TenantId("default"), THRESHOLD
        )
        conn = await asyncpg.connect(dsn)
        try:
            if series is None:
                return await builder.study(conn, TenantId("default"), Uid(study))
            built = await builder.series(conn, TenantId("default"), Uid(study), Uid(series))
            return built[1] if built else None
        finally:
            await conn.close()

    return asyncio.run(build())


def test_series_and_study_metadata_equal_pydicom_for_every_element_of_every_instance(tmp_path: Path) -> None:
    require_dcmtk()
    http_port = free_port()
    dev = start_dev(tmp_path / "var", tmp_path / "dev.log", free_port(), http_port)
    try:
        dsn = re.search(r"PostgreSQL\s+(postgresql://\S+)", dev.text()).group(1)  # type: ignore[union-attr]
        storage = dev.data_dir / "storage"
        root = f"http://127.0.0.1:{http_port}/dicomweb"
        run = uuid.uuid4().int % 10**12
        ct_study, ct_series = uid(run, 1), uid(run, 1, 1)
        mr_study, mr_series = uid(run, 2), [uid(run, 2, 1), uid(run, 2, 2)]
        ct = dicomdata.ct_series(ct_study, ct_series, 500, rows=256, columns=256)
        mr = dicomdata.mr_series(mr_study, mr_series[0], 12, rows=32, columns=32) + dicomdata.mr_series(
            mr_study, mr_series[1], 8, rows=32, columns=32
        )
        for ds in mr[12:]:
            ds.SeriesNumber = 2
        ct.reverse()  # sent last slice first: metadata must still be in InstanceNumber order
        files = dicomdata.write_all(ct + mr, tmp_path / "send")
        del ct
        result = storescu(dev.scp_port, files)
        assert result.returncode == 0, result.stderr

        expected_series = {ct_series: 500, mr_series[0]: 12, mr_series[1]: 8}

        def done() -> bool:
            rows = query(
                dsn,
                "SELECT series_uid, json_status, version, built_version, study_built_version,"
                " (SELECT count(*) FROM dicom_instance_meta i WHERE i.series_uid = m.series_uid)::int AS n"
                " FROM dicom_json_meta m WHERE study_uid = ANY($1::text[])",
                [ct_study, mr_study],
            )
            return {r["series_uid"]: r["n"] for r in rows} == expected_series and all(
                r["json_status"] == 1 and r["version"] == r["built_version"] == r["study_built_version"]
                for r in rows
            )

        wait_for(done, 120, "every series indexed and its metadata current")

        # Within a window (and a second) of the last instance's indexing.
        for study in (ct_study, mr_study):
            lag = query(
                dsn,
                "SELECT max(m.built_time) - (SELECT max(indexed_time) FROM dicom_instance_meta i"
                " WHERE i.study_uid = $1) AS lag FROM dicom_json_meta m WHERE m.study_uid = $1",
                study,
            )[0]["lag"]
            assert timedelta(0) < lag <= timedelta(seconds=WINDOW_S + 1), (study, lag)

        stored = {p.stem: p for p in storage.rglob("*.dcm")}
        metadata_dir = storage / "default" / "metadata"
        for study, series_list in ((ct_study, [ct_series]), (mr_study, mr_series)):
            study_instances = []
            for series in series_list:
                path = metadata_dir / study / f"{series}.json"
                instances = read_metadata(path)
                assert len(instances) == expected_series[series]
                assert [number_of(i) for i in instances] == sorted(number_of(i) for i in instances)
                for instance in instances:
                    assert instance == expected_instance(stored[sop_of(instance)], root), sop_of(instance)
                assert on_demand(dsn, storage, http_port, study, series) == path.read_bytes()
                study_instances += instances
            study_path = metadata_dir / f"{study}.json"
            assert read_metadata(study_path) == study_instances  # series by number, then instances
            assert on_demand(dsn, storage, http_port, study, None) == study_path.read_bytes()

        regenerated = [
            e for e in dev.events("metadata_regenerated", service=None) if ct_series in e["series"]
        ]  # type: ignore[operator]
        last = regenerated[-1]
        assert last["instances"] == 500
        sizes = orjson.dumps(
            {k: last[k] for k in ("read_ms", "build_ms", "write_ms", "study_bytes", "study_gzip_bytes")}
        )
        print(f"500-instance series regenerated: {sizes.decode()}")
    finally:
        dev.process.send_signal(signal.SIGTERM)
        if dev.process.wait(60) is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
