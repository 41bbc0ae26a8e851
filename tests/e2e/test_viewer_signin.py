"""The viewer's sign-in in a real browser: `pacsflow dev` with `PACSFLOW_AUTH=jwt` and a real OpenID
Connect issuer (tests/support/issuer.py). OHIF sends the browser to the issuer's login form, comes
back with an authorization code (PKCE), reads DICOMweb with the access token, and signs out at the
issuer; a browser that does not sign in gets nothing but 401. Every page runs under the viewer's
Content-Security-Policy, with no violation.

`tests/browser/signin.mjs` drives Debian's chromium (playwright-core) and reports what it saw; its
screenshots go to `tests/browser/results/signin/`."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from tests.support import dicomdata
from tests.support.browser import RESULTS, ViewerStudy, require_viewer, run_script
from tests.support.dev import Dev, start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.issuer import Issuer, User
from tests.support.services import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk, pytest.mark.browser]

CLIENT_ID = "pacsflow-viewer"  # PACSFLOW_OIDC_CLIENT_ID's default
SCOPE = "openid profile dicomweb.read dicomweb.write"  # what the viewer asks for
TENANTS = ["default", "alpha"]
JWT = "<jwt>"  # how the harness writes a token it saw: its form, never its value


@dataclass(frozen=True)
class Study(ViewerStudy):
    called: str  # the AE title storescu calls: it picks the tenant
    tenant: str
    syntax: str = ExplicitVRLittleEndian

    @property
    def dicomweb(self) -> str:
        return "/dicomweb" if self.tenant == "default" else f"/tenants/{self.tenant}/dicomweb"


# JPEG-LS, which the viewer decodes itself (CharLS compiled to WebAssembly, in its decode workers):
# the codecs' path runs too, not only the uncompressed one.
DEFAULT = Study("Signed^Viewer", 8, uid(881, 1), uid(881, 1, 1), "PACSFLOW", "default", JPEGLSLossless)
ALPHA = Study("Signed^Tenant", 2, uid(881, 2), uid(881, 2, 1), "ALPHA", "alpha")


@dataclass(frozen=True)
class Running:
    dev: Dev
    issuer: Issuer

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.dev.http_port}"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_dcmtk()
    require_viewer()
    tmp = tmp_path_factory.mktemp("signin")
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    # The redirect URIs the README says to register: one per router base the viewer is used under.
    callbacks = [f"{base}/callback", f"{base}/tenants/alpha/callback"]
    alice = User("alice-password", tenants=TENANTS, scope="dicomweb.read dicomweb.write")
    with Issuer(
        audience="pacsflow", client_id=CLIENT_ID, redirect_uris=callbacks, users={"alice": alice}
    ) as issuer:
        settings = {
            "PACSFLOW_AUTH": "jwt",
            "PACSFLOW_OIDC_ISSUER": issuer.url,
            "PACSFLOW_SCP_TENANTS": "ALPHA=alpha",
        }
        dev = start_dev(tmp / "var", tmp / "dev.log", free_port(), http_port, settings)
        try:
            # DICOM needs no token: the studies arrive as a modality sends them.
            for study in (DEFAULT, ALPHA):
                _store(dev, study, tmp)
            token = issuer.token(scope="dicomweb.read", tenants=TENANTS)
            for study in (DEFAULT, ALPHA):
                wait_for(
                    lambda study=study: _indexed(base, study, token) == study.slices,
                    60,
                    "the study to be searchable",
                )
            yield Running(dev, issuer)
        finally:
            if dev.process.poll() is None:
                os.killpg(dev.process.pid, signal.SIGTERM)
                dev.process.wait(timeout=60)


def _store(dev: Dev, study: Study, tmp: Path) -> None:
    datasets = dicomdata.phantom_ct(study.study, study.series, study.slices, study.patient, size=256)
    extra: tuple[str, ...] = ()
    if study.syntax == JPEGLSLossless:
        for ds in datasets:
            ds.compress(study.syntax, generate_instance_uid=False)  # the same instance, compressed
        extra = ("-xt",)  # propose JPEG-LS lossless: sent as it is, not decompressed on the way
    files = dicomdata.write_all(datasets, tmp / study.called)
    sent = storescu(dev.scp_port, files, called=study.called, extra=extra)
    assert sent.returncode == 0, sent.stderr


def _indexed(base: str, study: Study, token: str) -> int:
    request = urllib.request.Request(
        f"{base}{study.dicomweb}/studies?StudyInstanceUID={study.study}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        found = json.load(response)
    return int(found[0]["00201208"]["Value"][0]) if found else 0


@pytest.fixture(scope="module")
def report(running: Running) -> dict[str, Any]:
    instance = f"/studies/{DEFAULT.study}/series/{DEFAULT.series}/instances/{DEFAULT.series}.1"
    job = {
        "url": f"{running.base}/",
        "issuer": running.issuer.url,
        "username": "alice",
        "password": "alice-password",
        "patient": DEFAULT.listed_as,
        "seriesUid": DEFAULT.series,
        "frames": DEFAULT.slices,
        "tenant": {"url": f"{running.base}/tenants/alpha/", "patient": ALPHA.listed_as},
        # Each kind of DICOMweb read the viewer makes, asked without a token.
        "probes": [
            f"/dicomweb/studies?StudyInstanceUID={DEFAULT.study}",
            f"/dicomweb/studies/{DEFAULT.study}/series",
            f"/dicomweb/studies/{DEFAULT.study}/metadata",
            f"/dicomweb{instance}/frames/1",
            f"/dicomweb{instance}/thumbnail",
            f"/tenants/alpha/dicomweb/studies?StudyInstanceUID={ALPHA.study}",
        ],
        # No origin the viewer's policy names (port 9, discard: nothing would answer anyway).
        "canary": "http://127.0.0.1:9/",
        "timeoutMs": 60_000,
    }
    found = run_script("signin.mjs", "signin", job, timeout=300)
    for run in ("signedIn", "tenant"):
        print(f"\n{run}: {json.dumps(found[run]['timings'])}")
    return found


def _authorization_request(authorize: dict[str, Any], callback: str) -> None:
    """The code flow with PKCE (S256), for the viewer's client, back to its callback."""
    assert authorize["path"] == "/authorize"
    query = authorize["query"]
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == callback
    assert query["scope"] == SCOPE
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43  # base64url of a SHA-256 digest
    assert query["state"]


def _clean(seen: dict[str, Any]) -> None:
    assert seen["cspViolations"] == [], seen["cspViolations"]
    errors = seen["consoleErrors"]
    assert [e for e in errors if "Refused to" in e["text"]] == [], errors
    assert errors == [], errors
    assert seen["failedRequests"] == [], seen["failedRequests"]
    assert seen["harnessErrors"] == [], seen["harnessErrors"]


def _all_with_token(seen: dict[str, Any], dicomweb: str) -> None:
    requests = seen["dicomweb"]
    assert requests, "the viewer made no DICOMweb request"
    assert {r["url"].split("/dicomweb/")[0] + "/dicomweb" for r in requests} == {dicomweb}
    refused = [r for r in requests if r["authorization"] != f"Bearer {JWT}" or not 200 <= r["status"] < 300]
    assert refused == [], refused


def test_a_person_signs_in_at_the_issuer_views_a_study_and_signs_out(
    running: Running, report: dict[str, Any]
) -> None:
    signed_in = report["signedIn"]
    _authorization_request(signed_in["authorize"], f"{running.base}/callback")
    # Back from the issuer through OHIF's callback route, with a code and no token in the address.
    navigations = signed_in["seen"]["navigations"]
    callbacks = {url for url in navigations if url.startswith(f"{running.base}/callback?")}
    assert len(callbacks) == 1, navigations
    assert all("code=" in url and "access_token" not in url for url in callbacks), callbacks
    assert signed_in["landedOn"].startswith(f"{running.base}/")
    seen = signed_in["seen"]
    _clean(seen)
    _all_with_token(seen, f"{running.base}/dicomweb")
    # Every slice fetched with 200, and the picture on the canvas.
    assert signed_in["frames"] == {f"{DEFAULT.series}.{n}": 200 for n in range(1, DEFAULT.slices + 1)}
    assert signed_in["canvas"]["colours"] > 2, signed_in["canvas"]
    # As stored: JPEG-LS, decoded in the browser.
    assert signed_in["frameSyntaxes"] == [JPEGLSLossless]
    # Signed out at the issuer, which sent the browser back to the viewer's start page, where
    # OHIF, with no user any more, sent it to the login form again.
    sign_out = signed_in["signOut"]
    assert sign_out["path"] == "/logout"
    assert sign_out["query"]["post_logout_redirect_uri"] == f"{running.base}/"
    assert sign_out["query"]["id_token_hint"] == JWT
    _authorization_request(sign_out["authorize"], f"{running.base}/callback")
    after = navigations[navigations.index(f"{running.base}/logout") :]
    assert f"{running.base}/" in after, navigations
    for shot in ("login.png", "study-list.png", "study.png"):
        with Image.open(RESULTS / "signin" / shot) as image:
            assert len(image.convert("L").getcolors(maxcolors=65536) or ()) > 20, shot


def test_a_tenant_viewer_signs_in_through_its_own_callback(running: Running, report: dict[str, Any]) -> None:
    tenant = report["tenant"]
    _authorization_request(tenant["authorize"], f"{running.base}/tenants/alpha/callback")
    assert any(
        url.startswith(f"{running.base}/tenants/alpha/callback?") for url in tenant["seen"]["navigations"]
    )
    assert tenant["landedOn"].startswith(f"{running.base}/tenants/alpha")
    _clean(tenant["seen"])
    _all_with_token(tenant["seen"], f"{running.base}/tenants/alpha/dicomweb")


def test_a_browser_that_does_not_sign_in_gets_nothing_from_dicomweb(
    running: Running, report: dict[str, Any]
) -> None:
    anonymous = report["anonymous"]
    _authorization_request(anonymous["authorize"], f"{running.base}/callback")
    seen = anonymous["seen"]
    # The harness sees a violation when there is one: the canary fetch, refused by connect-src.
    assert anonymous["canary"] == {
        "url": "http://127.0.0.1:9/",
        "outcome": "refused",
        "directive": "connect-src",
    }
    assert [v for v in seen["cspViolations"] if "127.0.0.1:9" not in v] == [], seen["cspViolations"]
    # Whatever OHIF asked before it left for the login form, it asked without a token, and got 401.
    assert all(r["authorization"] is None and r["status"] == 401 for r in seen["dicomweb"]), seen["dicomweb"]
    probes = anonymous["probes"]
    assert len(probes) == 6
    for probe in probes:
        assert probe["status"] == 401, probe
        assert probe["challenge"].startswith('Bearer realm="pacsflow"'), probe


def test_the_viewer_pages_say_where_to_sign_in_and_what_may_run(running: Running) -> None:
    for path in ("/", "/tenants/alpha/viewer"):
        request = urllib.request.Request(running.base + path, headers={"Accept": "text/html"})
        with urllib.request.urlopen(request, timeout=10) as response:
            policy = response.headers["Content-Security-Policy"]
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["Referrer-Policy"] == "no-referrer"
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        # oidc-client-ts fetches the issuer's discovery document and token endpoint.
        assert directives["connect-src"] == f"'self' {running.issuer.url}"
        assert directives["frame-ancestors"] == "'none'"
    with urllib.request.urlopen(running.base + "/app-config.js", timeout=10) as response:
        script = response.read().decode()
    assert f'"authority": "{running.issuer.url}"' in script
    assert '"response_type": "code"' in script
