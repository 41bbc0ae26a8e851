"""The compose stack for real: an instance sent by C-STORE comes back through nginx over HTTPS.

Run by tests/compose/run.sh (`make compose-test`) once `docker compose up --wait` has the stack up
on this host: the SCP on localhost:11112, nginx on 8080 (HTTP, redirecting) and 8443 (HTTPS,
HTTP/2), Prometheus on 9090 and Grafana on 3000. HTTPS is verified against COMPOSE_TEST_CA, the
certificate run.sh copied out of the stack (nginx-config's self-signed one); unset, against the
system's trust store, for a stack given a real certificate.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.support import dicomdata
from tests.support.dimse import store_one
from tests.support.services import wait_for

HOST = "localhost"
SCP_PORT = 11112
HTTP_PORT = 8080
HTTPS_PORT = 8443
ORIGIN = f"https://{HOST}:{HTTPS_PORT}"
PROMETHEUS = "http://127.0.0.1:9090"
GRAFANA = "http://127.0.0.1:3000"
COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose" / "docker-compose.yml"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _tls() -> ssl.SSLContext:
    ca = os.environ.get("COMPOSE_TEST_CA")
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names in lower case) and body, gunzipped when nginx sent it gzipped."""
    request = urllib.request.Request(url, headers=headers)
    context = _tls() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            status, found, body = response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            status, found, body = error.code, dict(error.headers.items()), error.read()
    found = {k.lower(): v for k, v in found.items()}
    if found.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return status, found, body


def _json(url: str, **headers: str) -> Any:
    status, _, body = get(url, **headers)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="module")
def stored() -> tuple[str, str, str, bytes]:
    """One CT instance, sent to the SCP: its study, series and SOP instance UIDs and pixel data."""
    run = uuid.uuid4().int % 10**12  # the stack may hold earlier runs' studies
    study, series, sop = dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1), dicomdata.uid(run, 1, 1, 1)
    dataset = dicomdata.image(CTImageStorage, study, series, sop, 1, patient_id=f"COMPOSE-{run}")
    status = store_one(SCP_PORT, dataset, ExplicitVRLittleEndian)
    assert status.Status == 0, f"C-STORE status 0x{status.Status:04X}"
    return study, series, sop, bytes(dataset.PixelData)


def test_https_speaks_http2_and_http_redirects_there() -> None:
    context = _tls()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((HOST, HTTPS_PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    plain = http.client.HTTPConnection(HOST, HTTP_PORT, timeout=10)
    try:
        plain.request("GET", "/dicomweb/studies?limit=1")
        response = plain.getresponse()
        response.read()
    finally:
        plain.close()
    assert response.status == 308
    assert response.getheader("Location") == f"{ORIGIN}/dicomweb/studies?limit=1"


def test_a_stored_instance_is_found_by_qido(stored: tuple[str, str, str, bytes]) -> None:
    study, series, sop, _ = stored

    def found() -> list[Any]:
        status, _, body = get(f"{ORIGIN}/dicomweb/studies/{study}/instances", Accept="application/dicom+json")
        return json.loads(body) if status == 200 and body else []

    (instance,) = wait_for(found, 120, "QIDO-RS through nginx to list the instance stored by C-STORE", 0.5)
    assert instance["0020000E"]["Value"] == [series]
    assert instance["00080018"]["Value"] == [sop]


def test_nginx_sends_the_series_metadata_from_the_shared_volume(stored: tuple[str, str, str, bytes]) -> None:
    """web answers with X-Accel-Redirect once the metadata file is current; nginx then reads it from
    pacsflow-data itself, which needs the volume at the storage root's path and readable by it."""
    study, series, sop, _ = stored
    url = f"{ORIGIN}/dicomweb/studies/{study}/series/{series}/metadata"
    last: list[tuple[int, str | None]] = []

    def served_by_nginx() -> list[Any]:
        status, headers, body = get(url, Accept="application/dicom+json", **{"Accept-Encoding": "gzip"})
        last[:] = [(status, headers.get("x-served-by"))]
        if status != 200 or headers.get("x-served-by") != "nginx":
            return []
        return [item for item in json.loads(body) if item["00080018"]["Value"] == [sop]]

    try:
        wait_for(served_by_nginx, 120, "the series metadata, sent by nginx", 0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: status, X-Served-By = {last}") from None


def test_a_frame_comes_back_byte_for_byte(stored: tuple[str, str, str, bytes]) -> None:
    study, series, sop, pixels = stored
    url = f"{ORIGIN}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"

    def frame() -> tuple[dict[str, str], bytes] | None:
        status, headers, body = get(url, Accept=FRAMES)
        return (headers, body) if status == 200 else None

    headers, body = wait_for(frame, 120, "the frame through nginx", 0.5)
    message = message_from_bytes(b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + body)
    (part,) = message.get_payload()
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_payload(decode=True) == pixels


def _replicas(service: str) -> int:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return int(compose["services"][service].get("deploy", {}).get("replicas", 1))


def test_prometheus_scrapes_every_replica() -> None:
    expected = {job: _replicas(job) for job in ("web", "worker", "scp")}

    def up() -> dict[str, int]:
        targets = _json(f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
        counts = {job: 0 for job in expected}
        for target in targets:
            if target["labels"]["job"] in counts and target["health"] == "up":
                counts[target["labels"]["job"]] += 1
        return counts

    # One scrape interval (15 s) after the DNS refresh (15 s) finds them, with room to spare.
    wait_for(lambda: up() == expected, 120, f"Prometheus to scrape {expected} replicas up", 2)


def test_grafana_has_the_prometheus_datasource_and_pacsflows_dashboard() -> None:
    # A new grafana-data volume: admin/admin until someone signs in and changes it.
    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    wait_for(lambda: get(f"{GRAFANA}/api/health")[0] == 200, 120, "Grafana to answer", 1)
    health = _json(f"{GRAFANA}/api/datasources/uid/prometheus/health", **auth)
    assert health["status"] == "OK", health
    dashboards = _json(f"{GRAFANA}/api/search?type=dash-db", **auth)
    assert [d for d in dashboards if d.get("folderTitle") == "pacsflow"], dashboards
