"""WADO-RS series and study metadata from a real `pacsflow web`: files when current, the index otherwise."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.conftest import Scp, WorkerFactory, query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.metadata import expected_instance, sop_of
from tests.support.services import Broker, Service, free_port, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


WebFactory = Callable[..., Service]


@pytest.fixture
def start_web(tmp_path: Path, database: str) -> Iterator[WebFactory]:
    """Start `pacsflow web` processes on free ports; each is returned once it listens."""
    started: list[Service] = []

    def start(storage_root: Path, **env: str) -> Service:
        port = free_port()
        settings = {
            "PACSFLOW_DATA_DIR": str(tmp_path / "web"),
            "PACSFLOW_STORAGE_ROOT": str(storage_root),
            "PACSFLOW_DATABASE_URL": database,
            "PACSFLOW_HTTP_PORT": str(port),
            **{f"PACSFLOW_{k.upper()}": v for k, v in env.items()},
        }
        web = Service("web", settings, tmp_path / f"web{len(started)}.log").start()
        started.append(web)
        web.port = port  # type: ignore[attr-defined]
        wait_for(lambda: web.events("web_listening") or not web.alive(), 30, "pacsflow web to listen")
        assert web.alive(), web.log_path.read_text()[-3000:]
        return web

    yield start
    for web in started:
        web.stop()


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names in lower case) and body."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        with error:  # it holds the connection: closed here, not by the garbage collector
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def current(dsn: str, series: str, count: int) -> bool:
    rows = query(
        dsn,
        "SELECT json_status = 1 AND version = built_version AS ok,"
        " (SELECT count(*) FROM dicom_instance_meta i WHERE i.series_uid = m.series_uid)::int AS n"
        " FROM dicom_json_meta m WHERE series_uid = $1",
        series,
    )
    return bool(rows) and rows[0]["ok"] and rows[0]["n"] == count


def indexed(dsn: str, series: str, count: int) -> bool:
    rows = query(dsn, "SELECT count(*)::int AS n FROM dicom_instance_meta WHERE series_uid = $1", series)
    return rows[0]["n"] == count


def stored(scp: Scp) -> dict[str, Path]:
    return {p.stem: p for p in scp.storage_root.rglob("*.dcm")}


def check_instances(body: bytes, scp: Scp, root: str, count: int) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = json.loads(body)
    assert len(instances) == count
    files = stored(scp)
    for instance in instances:
        assert instance == expected_instance(files[sop_of(instance)], root)
    return instances


def test_series_metadata_is_the_regenerated_file_gzipped_as_is_with_etag_and_cors(
    scp: Scp,
    broker: Broker,
    database: str,
    start_worker: WorkerFactory,
    start_web: WebFactory,
    tmp_path: Path,
) -> None:
    require_dcmtk()
    web = start_web(scp.storage_root)
    base = f"http://127.0.0.1:{web.port}"  # type: ignore[attr-defined]
    start_worker(broker.bootstrap, database, scp.storage_root, http_port=str(web.port))  # type: ignore[attr-defined]
    run = uuid.uuid4().int % 10**12
    study, series = uid(run, 1), uid(run, 1, 1)
    files = dicomdata.write_all(dicomdata.ct_series(study, series, 12), tmp_path / "send")
    assert storescu(scp.port, files).returncode == 0
    wait_for(lambda: current(database, series, 12), 30, "the series metadata file")

    url = f"{base}/dicomweb/studies/{study}/series/{series}/metadata"
    status, headers, body = get(url, **{"Accept-Encoding": "gzip", "Origin": "http://viewer.test"})
    assert status == 200 and headers["content-type"] == "application/dicom+json"
    assert headers["content-encoding"] == "gzip" and headers["access-control-allow-origin"] == "*"
    path = scp.storage_root / "default" / "metadata" / study / f"{series}.json"
    assert body == path.with_name(path.name + ".gz").read_bytes()  # the pre-compressed file, as is
    instances = check_instances(gzip.decompress(body), scp, f"{base}/dicomweb", 12)
    assert [int(i["00200013"]["Value"][0]) for i in instances] == list(range(1, 13))
    status, _, _ = get(url, **{"If-None-Match": headers["etag"], "Accept-Encoding": "gzip"})
    assert status == 304

    with requests.Session() as session:  # closed here: its sockets must not outlive the test
        client = DICOMwebClient(f"{base}/dicomweb", session=session)
        series_level = client.retrieve_series_metadata(study, series)
        study_level = client.retrieve_study_metadata(study)
    assert [sop_of(i) for i in series_level] == [sop_of(i) for i in instances]
    assert [sop_of(i) for i in study_level] == [sop_of(i) for i in instances]

    # Reached through a proxy under another name: URIs follow the client's view, built on demand.
    status, _, body = get(url, **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org"})
    assert status == 200
    check_instances(body, scp, "https://pacs.example.org/dicomweb", 12)


def test_metadata_is_complete_before_the_window_closes_and_errors_are_readable(
    scp: Scp,
    broker: Broker,
    database: str,
    start_worker: WorkerFactory,
    start_web: WebFactory,
    tmp_path: Path,
) -> None:
    require_dcmtk()
    web = start_web(scp.storage_root, cors_origins="http://viewer.test")
    base = f"http://127.0.0.1:{web.port}"  # type: ignore[attr-defined]
    start_worker(broker.bootstrap, database, scp.storage_root, metadata_window_s="600")
    run = uuid.uuid4().int % 10**12
    study, series = uid(run, 2), uid(run, 2, 1)
    files = dicomdata.write_all(dicomdata.mr_series(study, series, 7, rows=32, columns=32), tmp_path / "send")
    assert storescu(scp.port, files).returncode == 0
    wait_for(lambda: indexed(database, series, 7), 30, "7 instance rows")
    assert not (scp.storage_root / "default" / "metadata" / study / f"{series}.json").exists()

    status, headers, body = get(f"{base}/dicomweb/studies/{study}/series/{series}/metadata")
    assert status == 200 and "etag" in headers
    check_instances(body, scp, f"{base}/dicomweb", 7)
    status, _, body = get(f"{base}/dicomweb/studies/{study}/metadata")
    assert status == 200
    check_instances(body, scp, f"{base}/dicomweb", 7)
    sop = f"{series}.3"
    status, _, body = get(f"{base}/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata")
    assert status == 200
    assert [sop_of(i) for i in check_instances(body, scp, f"{base}/dicomweb", 1)] == [sop]
    status, _, body = get(f"{base}/dicomweb/studies/{study}/series/{series}/instances/{series}.99/metadata")
    assert status == 404 and f"{series}.99" in json.loads(body)["error"]

    status, headers, body = get(
        f"{base}/dicomweb/studies/{study}/series/1.2.3/metadata", Origin="http://viewer.test"
    )
    assert status == 404 and "1.2.3" in json.loads(body)["error"]
    assert headers["access-control-allow-origin"] == "http://viewer.test"  # errors carry CORS too
    status, _, body = get(f"{base}/dicomweb/studies/1.2.x/series/{series}/metadata")
    assert status == 400 and "StudyInstanceUID" in json.loads(body)["error"]
    # Another tenant's URL never sees the default tenant's series.
    status, _, _ = get(f"{base}/tenants/other/dicomweb/studies/{study}/series/{series}/metadata")
    assert status == 404
    status, _, body = get(f"{base}/tenants/no%20such/dicomweb/studies/{study}/metadata")
    assert status == 400 and "tenant" in json.loads(body)["error"]

    preflight = urllib.request.Request(
        f"{base}/dicomweb/studies/{study}/metadata",
        method="OPTIONS",
        headers={"Origin": "http://viewer.test", "Access-Control-Request-Method": "GET"},
    )
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    refused = urllib.request.Request(
        f"{base}/dicomweb/studies/{study}/metadata",
        method="OPTIONS",
        headers={"Origin": "http://elsewhere.test", "Access-Control-Request-Method": "GET"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(refused, timeout=10)
    with caught.value as error:
        assert error.code == 403
