"""OHIF in a real browser against a running `pacsflow dev`: served by pacsflow, and from another
origin as a hospital's own OHIF deployment would be; in both, a new study uploaded through OHIF's
upload dialog (STOW-RS) is then listed.

Debian's chromium is driven by playwright-core (`tests/browser/viewer.mjs`, installed by `make
install` from `tests/browser/package-lock.json`). The script reports what the browser saw and
writes screenshots to `tests/browser/results/<run>/`; this test checks the report, and prints the
timings (`pytest -s`) that the README quotes."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from egress.viewer.config import fixed
from egress.viewer.release import installed_dir
from tests.support import dicomdata
from tests.support.browser import RESULTS, ViewerStudy, require_viewer, run_script
from tests.support.dev import Dev, start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.nginx import Nginx, require_nginx
from tests.support.services import free_port, wait_for
from tests.support.static_site import StaticSite

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk, pytest.mark.browser]


@dataclass(frozen=True)
class Study(ViewerStudy):
    called: str | None  # the AE title storescu calls: it picks the tenant; None: uploaded in OHIF
    tenant: str | None  # None: the default tenant


DEFAULT = Study("Phantom^Pacsflow", 100, uid(880, 1), uid(880, 1, 1), "PACSFLOW", None)
ALPHA = Study("Alpha^Tenant", 20, uid(880, 2), uid(880, 2, 1), "ALPHA", "alpha")
# Not stored beforehand: each is sent by OHIF's upload dialog in one run, to the default tenant.
UPLOADED = Study("Uploaded^Sameorigin", 1, uid(880, 3), uid(880, 3, 1), None, None)
UPLOADED_ELSEWHERE = Study("Uploaded^Crossorigin", 1, uid(880, 4), uid(880, 4, 1), None, None)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dev, StaticSite]]:
    require_dcmtk()
    require_viewer()
    tmp = tmp_path_factory.mktemp("viewer")
    http_port = free_port()
    # The other origin: a plain static server holding OHIF and a configuration aimed at pacsflow.
    # It binds its port now, before pacsflow starts.
    config = fixed(f"http://127.0.0.1:{http_port}/dicomweb").encode()
    with StaticSite(installed_dir(), free_port(), {"/app-config.js": config}) as site:
        # Only that origin is allowed: the cross-origin run proves the CORS settings, not `*`.
        running = start_dev(
            tmp / "var",
            tmp / "dev.log",
            free_port(),
            http_port,
            {"PACSFLOW_CORS_ORIGINS": site.origin, "PACSFLOW_SCP_TENANTS": "ALPHA=alpha"},
        )
        yield from _with_studies(running, tmp, site)


def _with_studies(running: Dev, tmp: Path, site: StaticSite) -> Iterator[tuple[Dev, StaticSite]]:
    try:
        for study in (DEFAULT, ALPHA):
            assert study.called is not None
            datasets = dicomdata.phantom_ct(study.study, study.series, study.slices, study.patient)
            sent = storescu(
                running.scp_port, dicomdata.write_all(datasets, tmp / study.called), called=study.called
            )
            assert sent.returncode == 0, sent.stderr
            wait_for(
                lambda study=study: _indexed(running.http_port, study) == study.slices,
                60,
                "the study to be searchable",
            )
        yield running, site
    finally:
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGTERM)
            running.process.wait(timeout=60)


def _indexed(port: int, study: Study) -> int:
    prefix = f"/tenants/{study.tenant}" if study.tenant else ""
    url = f"http://127.0.0.1:{port}{prefix}/dicomweb/studies?StudyInstanceUID={study.study}"
    with urllib.request.urlopen(url, timeout=5) as response:
        found = json.load(response)
    return int(found[0]["00201208"]["Value"][0]) if found else 0


def _upload_file(study: Study, directory: Path) -> Path:
    """One instance of a new study, small (256 x 256) so that the upload is quick."""
    [instance] = dicomdata.phantom_ct(study.study, study.series, study.slices, study.patient, size=256)
    return dicomdata.write(instance, directory / f"{study.study}.dcm")


def _browse(
    url: str,
    run: str,
    study: Study,
    absent: list[Study],
    upload: tuple[Study, Path] | None = None,
    *,
    self_signed: bool = False,
) -> dict[str, object]:
    job: dict[str, object] = {
        "url": url,
        "patient": study.listed_as,
        "absent": [other.listed_as for other in absent],
        "seriesUid": study.series,
        "frames": study.slices,
        "timeoutMs": 120_000,
        # nginx's own certificate, made by `pacsflow nginx-config`: no browser trusts it.
        "ignoreHTTPSErrors": self_signed,
    }
    if upload:
        job["upload"] = {"file": str(upload[1]), "patient": upload[0].listed_as}
    report = run_script("viewer.mjs", run, job, timeout=400)
    print(f"\n{run}: {json.dumps(report['timings'])}")
    return report


def _check(report: dict[str, object], run: str, study: Study) -> None:
    assert report["consoleErrors"] == [], report["consoleErrors"]
    assert report["failedRequests"] == [], report["failedRequests"]
    assert report["othersListed"] == [], "another tenant's patient is listed"
    assert report["harnessErrors"] == [], report["harnessErrors"]
    assert "network never quiet" not in report["steps"]  # type: ignore[operator]
    # Every slice of the series on screen, each fetched once or more, every time with 200.
    expected = {f"{study.series}.{n}" for n in range(1, study.slices + 1)}
    assert report["frames"] == dict.fromkeys(expected, 200)
    timings = report["timings"]
    assert isinstance(timings, dict) and set(timings) == {
        "studyListMs",
        "firstImageMs",
        "allFramesMs",
        "studyListAgainMs",
    }
    canvas = report["canvas"]
    assert isinstance(canvas, dict) and canvas["colours"] > 2, canvas
    shots = ["study-list.png", "study.png"] + (["upload.png"] if report["upload"] else [])
    for shot in shots:
        with Image.open(RESULTS / run / shot) as image:
            assert image.size == (1440, 900)
            # Not a blank page: a screenshot of OHIF has its dark background and much else.
            assert len(image.convert("L").getcolors(maxcolors=65536) or ()) > 20, shot


def _check_upload(report: dict[str, object], port: int, study: Study, origin: str, allowed: str) -> None:
    """OHIF sent the file with one STOW-RS POST, pacsflow stored it (200), the dialog said so, and
    the study list (then QIDO-RS) shows the new study."""
    upload = report["upload"]
    assert isinstance(upload, dict), f"no upload: {report['steps']}"
    assert upload["listedBefore"] is False, "the uploaded study was listed before its upload"
    post = upload["post"]
    assert post is not None, f"OHIF sent no request: {upload['failures']}"
    stow = f"http://127.0.0.1:{port}/dicomweb/studies"
    assert report["writes"] == [
        {"method": "POST", "url": stow, "status": 200, "origin": origin, "allowed": allowed}
    ], report["writes"]
    assert (post["url"], post["status"]) == (stow, 200), post["answer"]
    assert post["contentType"].startswith('multipart/related; type="application/dicom"')
    # The Store Instances Response names the instance stored and no failure.
    assert post["answerType"].startswith("application/dicom+json"), post["answerType"]
    answer = json.loads(post["answer"])
    assert "00081198" not in answer, answer  # FailedSOPSequence
    stored = [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]]
    assert stored == [f"{study.series}.1"], answer
    assert (upload["outcome"], upload["summary"], upload["failures"]) == (
        "Completed!",
        "1 file completed.",
        [],
    )
    assert upload["listed"] is True, f"not listed after {upload['reloads']} reloads"
    assert _indexed(port, study) == study.slices
    print(f"{study.patient}: uploaded in {upload['ms']} ms, listed after {upload['reloads']} reloads")


def test_the_viewer_served_by_pacsflow_lists_loads_a_100_slice_series_and_uploads_a_study(
    dev: tuple[Dev, StaticSite], tmp_path: Path
) -> None:
    running, _ = dev
    assert _indexed(running.http_port, UPLOADED) == 0
    upload = (UPLOADED, _upload_file(UPLOADED, tmp_path))
    report = _browse(f"http://127.0.0.1:{running.http_port}/", "same-origin", DEFAULT, [ALPHA], upload)
    _check(report, "same-origin", DEFAULT)
    # Same origin: the browser sends no Origin on these GETs, and no CORS header is needed. On a
    # POST it sends its own origin, which needs no CORS answer either.
    assert set(report["dicomwebOrigins"]) == {"(none)"}  # type: ignore[call-overload]
    page = f"http://127.0.0.1:{running.http_port}"
    _check_upload(report, running.http_port, UPLOADED, page, "(none)")


def test_a_viewer_on_another_origin_reads_and_uploads_through_cors(
    dev: tuple[Dev, StaticSite], tmp_path: Path
) -> None:
    running, site = dev
    assert _indexed(running.http_port, UPLOADED_ELSEWHERE) == 0
    upload = (UPLOADED_ELSEWHERE, _upload_file(UPLOADED_ELSEWHERE, tmp_path))
    report = _browse(f"{site.origin}/", "cross-origin", DEFAULT, [ALPHA], upload)
    _check(report, "cross-origin", DEFAULT)
    origins = report["dicomwebOrigins"]
    assert isinstance(origins, dict) and set(origins) == {site.origin}, origins
    assert report["allowedOrigins"] == {site.origin: origins[site.origin]}
    # The upload's POST (multipart/related) needed a preflight, which pacsflow answered.
    _check_upload(report, running.http_port, UPLOADED_ELSEWHERE, site.origin, site.origin)


def test_a_tenant_has_its_own_viewer_at_its_own_path(dev: tuple[Dev, StaticSite]) -> None:
    running, _ = dev
    # The default tenant's studies, uploaded ones included (when their tests ran first), are not
    # listed for another tenant.
    others = [DEFAULT, UPLOADED, UPLOADED_ELSEWHERE]
    report = _browse(f"http://127.0.0.1:{running.http_port}/tenants/alpha/", "tenant", ALPHA, others)
    _check(report, "tenant", ALPHA)
    # Everything the page asked of DICOMweb, it asked of the tenant's.
    timeline = report["timeline"]
    assert isinstance(timeline, list)
    dicomweb = {entry["url"].split("/dicomweb/")[0] for entry in timeline if "/dicomweb/" in entry["url"]}
    assert dicomweb == {f"http://127.0.0.1:{running.http_port}/tenants/alpha"}


def test_the_viewer_through_nginx_over_https_with_http2(dev: tuple[Dev, StaticSite], tmp_path: Path) -> None:
    """As compose serves it: nginx sends OHIF's files itself and passes the rest to pacsflow."""
    require_nginx()
    running, _ = dev
    front = Nginx(tmp_path / "nginx")
    front.configure([running.http_port], {"PACSFLOW_DATA_DIR": str(running.data_dir)})
    with front:
        report = _browse(f"{front.origin}/tenants/alpha/", "nginx", ALPHA, [DEFAULT], self_signed=True)
    _check(report, "nginx", ALPHA)
    timeline = report["timeline"]
    assert isinstance(timeline, list)
    dicomweb = {entry["url"].split("/dicomweb/")[0] for entry in timeline if "/dicomweb/" in entry["url"]}
    assert dicomweb == {f"{front.origin}/tenants/alpha"}
    # Every request came over HTTP/2; the bundles were nginx's (no upstream), DICOMweb pacsflow's.
    lines = front.requests_log()
    assert lines and all(' HTTP/2.0" ' in line for line in lines), lines[:5]
    bundles = [line for line in lines if ".bundle." in line and " 200 " in line]
    assert bundles and all(line.endswith('ua="-"') for line in bundles), bundles[:5]
    upstream = f'ua="127.0.0.1:{running.http_port}"'
    assert all(line.endswith(upstream) for line in lines if "/dicomweb/" in line)
