"""Debian's nginx in front of two `pacsflow web` processes, configured by `pacsflow nginx-config`
(the configuration compose runs): HTTPS with HTTP/2, HTTP redirected, balanced over both
processes and losing no request when one is killed, public `https://` URLs in what pacsflow
writes, STOW-RS bounded by nginx, and current metadata files sent by nginx itself."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from egress.viewer.release import installed_dir, is_installed
from tests.conftest import query
from tests.support import dicomdata
from tests.support.nginx import Nginx, require_nginx
from tests.support.services import Broker, Service, free_port, wait_for
from tests.support.stack import indexed, on_a_new_database

pytestmark = [pytest.mark.slow, pytest.mark.broker]

LIMIT = 1 << 20  # PACSFLOW_STOW_MAX_REQUEST_BYTES, and so nginx's client_max_body_size
PREFIX = "/_pacsflow/storage/"  # PACSFLOW_HTTP_ACCEL_REDIRECT
BOUNDARY = "nginx-test-boundary"
DICOM_PARTS = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
SLICES = 3
ANSWERED = re.compile(r'"GET /dicomweb/studies HTTP/[0-9.]+" 200 .* ua="127\.0\.0\.1:(\d+)"$')


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(
            gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        )


def fetch(
    nginx: Nginx,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One request on a connection of its own, over TLS that trusts only nginx's certificate."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", nginx.https_port, context=nginx.trusting(), timeout=30
    )
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def multipart(parts: list[bytes]) -> bytes:
    out = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return out + f"--{BOUNDARY}--\r\n".encode()


@dataclass
class Proxied:
    front: Nginx
    """nginx over both web processes."""
    files: Nginx
    """nginx over the third web process, whose PACSFLOW_PUBLIC_URL is this nginx's origin: the
    origin the worker writes metadata files for, so that they are current for its clients."""
    webs: list[Service]
    dsn: str
    env: dict[str, str]
    folder: Path
    study: str
    series: str
    stowed: Answer


def start_web(env: Mapping[str, str], folder: Path, name: str, **extra: str) -> tuple[Service, int]:
    port = free_port()
    settings = {**env, "PACSFLOW_HTTP_PORT": str(port), "PACSFLOW_DATA_DIR": str(folder / name), **extra}
    web = Service("web", settings, folder / f"{name}.log").start()
    wait_for(lambda: web.events("web_listening") or not web.alive(), 60, f"{name} to listen")
    assert web.alive(), web.log_path.read_text()[-3000:]
    return web, port


@pytest.fixture(scope="module")
def proxied(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    require_nginx()
    tmp = tmp_path_factory.mktemp("nginx")
    front, files = Nginx(tmp / "front"), Nginx(tmp / "files")
    common = {"PACSFLOW_STOW_MAX_REQUEST_BYTES": str(LIMIT), "PACSFLOW_HTTP_ACCEL_REDIRECT": PREFIX}
    worker = {"PACSFLOW_PUBLIC_URL": files.origin}
    with on_a_new_database(broker.bootstrap, redis_url, tmp, scp=None, common=common, worker=worker) as stack:
        env = dict(stack.web.env)
        second, second_port = start_web(env, tmp, "web2")
        try:
            front.configure([stack.http_port, second_port], env)
            with front:
                run = uuid.uuid4().int % 10**12
                study, series = dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1)
                parts = [
                    dicomdata.encode(ds)
                    for ds in dicomdata.ct_series(study, series, SLICES, rows=16, columns=16)
                ]
                stowed = fetch(
                    front, "/dicomweb/studies", "POST", multipart(parts), {"Content-Type": DICOM_PARTS}
                )
                assert stowed.status == 200, stowed.body
                indexed(stack.dsn, SLICES)
                yield Proxied(front, files, [stack.web, second], stack.dsn, env, tmp, study, series, stowed)
        finally:
            second.stop()


def test_https_speaks_http2_and_plain_http_redirects_there(proxied: Proxied) -> None:
    front = proxied.front
    context = front.trusting()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", front.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
    plain = http.client.HTTPConnection("127.0.0.1", front.http_port, timeout=10)
    try:
        plain.request("GET", "/dicomweb/studies?PatientID=PAT-CT&limit=5")
        response = plain.getresponse()
        response.read()
        assert response.status == 308
        assert response.getheader("Location") == f"{front.origin}/dicomweb/studies?PatientID=PAT-CT&limit=5"
        # The healthcheck compose runs answers on plain HTTP, from nginx alone.
        plain.request("GET", "/nginx-health")
        health = plain.getresponse()
        assert (health.status, health.read()) == (200, b"ok\n")
    finally:
        plain.close()
    # Prometheus scrapes each web process on its own port; the public address keeps it to itself.
    # Readiness too: through here it would let anyone make every process ask the database and broker.
    for probe in ("/metrics", "/ready"):
        hidden = fetch(front, probe)
        assert hidden.status == 404 and b"<center>nginx</center>" in hidden.body, probe


def test_stow_within_the_limit_passes_and_a_larger_one_is_refused_by_nginx(proxied: Proxied) -> None:
    answer = proxied.stowed.json()
    assert "00081198" not in answer, answer  # FailedSOPSequence
    assert answer["00081190"]["Value"] == [f"{proxied.front.origin}/dicomweb/studies/{proxied.study}"]
    big = multipart([b"\0" * LIMIT])
    refused = fetch(proxied.front, "/dicomweb/studies", "POST", big, {"Content-Type": DICOM_PARTS})
    assert refused.status == 413
    # nginx's own page, not pacsflow's JSON: the body never reached a web process.
    assert b"<center>nginx</center>" in refused.body, refused.body[:300]


def bulkdata_uris(instances: list[dict[str, Any]]) -> list[str]:
    return [
        value["BulkDataURI"]
        for instance in instances
        for value in instance.values()
        if "BulkDataURI" in value
    ]


def test_urls_pacsflow_writes_name_the_public_https_origin(proxied: Proxied) -> None:
    front = proxied.front
    found = fetch(front, f"/dicomweb/studies?StudyInstanceUID={proxied.study}").json()
    assert found[0]["00081190"]["Value"] == [f"{front.origin}/dicomweb/studies/{proxied.study}"]
    # Built by pacsflow for this origin (the files are the other nginx's): from X-Forwarded-*.
    answer = fetch(front, f"/dicomweb/studies/{proxied.study}/series/{proxied.series}/metadata")
    assert answer.status == 200 and "x-served-by" not in answer.headers
    uris = bulkdata_uris(answer.json())
    assert len(uris) >= SLICES
    assert all(uri.startswith(f"{front.origin}/dicomweb/studies/{proxied.study}/") for uri in uris), uris


def current(dsn: str, series: str) -> bool:
    rows = query(
        dsn,
        "SELECT json_status = 1 AND version = built_version AS ok FROM dicom_json_meta WHERE series_uid = $1",
        series,
    )
    return bool(rows) and bool(rows[0]["ok"])


def test_current_metadata_files_are_sent_by_nginx(proxied: Proxied) -> None:
    files = proxied.files
    web, port = start_web(proxied.env, proxied.folder, "web3", PACSFLOW_PUBLIC_URL=files.origin)
    try:
        files.configure([port], proxied.env)
        with files:
            wait_for(lambda: current(proxied.dsn, proxied.series), 30, "the series' metadata file")
            path = f"/dicomweb/studies/{proxied.study}/series/{proxied.series}/metadata"
            zipped = fetch(files, path, headers={"Accept-Encoding": "gzip", "Origin": "http://viewer.test"})
            assert zipped.status == 200, zipped.body
            assert zipped.headers["x-served-by"] == "nginx"  # the internal location's, never pacsflow's
            assert zipped.headers["content-encoding"] == "gzip"  # the .json.gz, as it is on disk
            assert zipped.headers["content-type"] == "application/dicom+json"
            assert zipped.headers["vary"] == "Accept-Encoding"
            # The CORS answer pacsflow gave survives the internal redirect, and so do the headers
            # nginx would drop: revalidate every time (the file changes as a study arrives).
            assert zipped.headers["access-control-allow-origin"] == "*"
            assert zipped.headers["cache-control"] == "no-cache"
            assert zipped.headers["x-content-type-options"] == "nosniff"
            assert zipped.headers["x-request-id"]
            instances = zipped.json()
            assert len(instances) == SLICES
            assert all(uri.startswith(f"{files.origin}/dicomweb/") for uri in bulkdata_uris(instances))
            # pacsflow reached without nginx's handshake header (or with another prefix in it)
            # sends the file itself: never an empty 200.
            for headers in ({}, {"X-Pacsflow-Accel": "/_other/"}):
                direct_status, direct_body = _direct(port, path, headers)
                assert direct_status == 200 and json.loads(direct_body) == instances
            plain = fetch(files, path, headers={"Accept-Encoding": "identity"})
            assert plain.headers["x-served-by"] == "nginx" and "content-encoding" not in plain.headers
            assert json.loads(plain.body) == instances
            again = fetch(files, path, headers={"If-None-Match": plain.headers["etag"]})
            assert (again.status, again.body) == (304, b"")
            # Another tenant's path is still pacsflow's decision: no such study there.
            other = fetch(
                files, f"/tenants/other/dicomweb/studies/{proxied.study}/series/{proxied.series}/metadata"
            )
            assert other.status == 404 and "x-served-by" not in other.headers
            # The storage is not reachable from outside through the internal location.
            direct = fetch(files, f"{PREFIX}default/metadata/{proxied.study}/{proxied.series}.json")
            assert direct.status == 404 and "x-served-by" not in direct.headers
    finally:
        web.stop()


def _direct(port: int, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """A request straight to a web process, as a client inside the network could make."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Accept-Encoding": "identity", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_viewer_files_come_from_nginx_and_its_pages_from_pacsflow(proxied: Proxied) -> None:
    if not is_installed(installed_dir()):
        pytest.skip("the OHIF viewer is not installed (make install)")
    front = proxied.front
    bundle = next(p.name for p in (front.folder / "viewer").glob("app.bundle.*.js"))
    script = fetch(front, f"/tenants/alpha/{bundle}", headers={"Accept-Encoding": "gzip"})
    assert script.status == 200 and script.headers["content-encoding"] == "gzip"
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-security-policy" not in script.headers
    page = fetch(front, "/tenants/alpha/viewer", headers={"Accept": "text/html"})
    assert page.status == 200 and "content-security-policy" in page.headers  # pacsflow's page
    config = fetch(front, "/app-config.js")
    assert config.status == 200 and b"window.location.origin" in config.body


def answered_by(nginx: Nginx) -> set[int]:
    """The ports of the web processes that answered QIDO-RS searches, from nginx's access log."""
    answered = (ANSWERED.search(line) for line in nginx.requests_log())
    return {int(found.group(1)) for found in answered if found}


def test_a_killed_web_process_costs_no_request(proxied: Proxied) -> None:
    front, (first, second) = proxied.front, proxied.webs
    ports = {int(w.env["PACSFLOW_HTTP_PORT"]) for w in (first, second)}
    # Both processes answer: least_conn spreads idle requests like round robin.
    for _ in range(10):
        assert fetch(front, "/dicomweb/studies").status == 200
    assert ports <= answered_by(front), front.requests_log()

    statuses: list[int | str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                statuses.append(fetch(front, "/dicomweb/studies").status)
            except (OSError, http.client.HTTPException) as exc:
                statuses.append(repr(exc))

    client = threading.Thread(target=keep_asking)
    client.start()
    try:
        wait_for(lambda: len(statuses) >= 5, 30, "the client's first answers")
        killed = int(first.env["PACSFLOW_HTTP_PORT"])
        assert first.process is not None
        first.process.kill()
        first.process.wait()
        disabled = f'upstream: "http://127.0.0.1:{killed}/'
        wait_for(
            lambda: any(
                "temporarily disabled" in line and disabled in line for line in front.errors().splitlines()
            ),
            30,
            "nginx to take the killed process out",
        )
        marked = len(statuses)
        wait_for(lambda: len(statuses) >= marked + 30, 60, "30 more answers")
    finally:
        stop.set()
        client.join(30)
    assert statuses and all(status == 200 for status in statuses), [s for s in statuses if s != 200]
    assert second.alive()
