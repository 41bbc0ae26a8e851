"""The viewer's routes over real HTTP, on a small OHIF-shaped folder, and the security headers of its
pages. The configuration script itself is tests/unit/egress/test_viewer_config.py.

The real OHIF in a real browser is tests/e2e/test_viewer.py (and, signing in, test_viewer_signin.py),
which also fail on any violation of the pages' Content-Security-Policy."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from yarl import URL

from egress.viewer import config, release, site
from egress.wado.errors import errors
from pipeline import settings as settings_module
from pipeline.errors import PacsflowError
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
INLINE = 'window.PUBLIC_URL="/"'
PAGE = (
    b"<!doctype html><script src='/app-config.js'></script>"
    + f"<script>{INLINE}</script><div id=root></div>".encode()
)
BUNDLE = "app.bundle.0f6159c501addfe9.js"
Check = Callable[[ClientSession, str], Awaitable[None]]


def _dist(folder: Path) -> Path:
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_bytes(PAGE)
    (folder / BUNDLE).write_text("console.log('ohif');" * 200)
    (folder / f"{BUNDLE}.gz").write_bytes(gzip.compress((folder / BUNDLE).read_bytes()))
    (folder / "manifest.json").write_text('{"name": "OHIF"}')
    (folder / "assets" / "logo.svg").write_text("<svg/>")
    (folder / release.COMPLETE).write_text("fake")
    return folder


def _serve(settings: Settings, check: Check, release_dir: Path | None = None) -> None:
    async def main() -> None:
        app = web.Application(middlewares=[errors])
        if release_dir is None:
            site.add_routes(app, settings)
        else:
            site.add_routes(app, settings, release_dir=release_dir)
        async with TestServer(app) as server, ClientSession() as client:
            await check(client, str(server.make_url("")).rstrip("/"))

    asyncio.run(main())


def _settings(tmp_path: Path, **env: str) -> Settings:
    return settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path / "var"), **env})


def test_pages_files_and_their_cache_headers(tmp_path: Path) -> None:
    dist = _dist(tmp_path / "dist")

    async def check(client: ClientSession, base: str) -> None:
        html = {"Accept": "text/html,application/xhtml+xml"}
        # The application's routes, for the default tenant and another, are its one page.
        for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/tenants/alpha/", "/tenants/alpha/viewer"):
            async with client.get(base + path, headers=html) as response:
                assert response.status == 200, path
                assert await response.read() == PAGE
                assert response.headers["Cache-Control"] == "no-cache"
                etag = response.headers["ETag"]
        async with client.get(base + "/", headers={**html, "If-None-Match": etag}) as response:
            assert response.status == 304
        # Hashed names never change: a year, immutable; and gzip from the precompressed twin.
        async with client.get(base + "/" + BUNDLE, headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert response.headers["Content-Encoding"] == "gzip"
            assert await response.text() == (dist / BUNDLE).read_text()
        for path in ("/manifest.json", "/assets/logo.svg", "/tenants/alpha/manifest.json"):
            async with client.get(base + path) as response:
                assert response.status == 200, path
                assert response.headers["Cache-Control"] == "no-cache"
        async with client.get(base + "/app-config.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            assert response.headers["Cache-Control"] == "no-cache"
            assert "window.config = config" in await response.text()

    _serve(_settings(tmp_path, PACSFLOW_VIEWER=str(dist)), check)


def test_what_is_no_page_is_a_404_with_a_reason(tmp_path: Path) -> None:
    dist = _dist(tmp_path / "dist")
    (tmp_path / "secret.txt").write_text("not the viewer's")
    (dist / "escape.txt").symlink_to(tmp_path / "secret.txt")

    async def check(client: ClientSession, base: str) -> None:
        cases = {
            # A missing script is a 404, not the page parsed as JavaScript.
            "/app.bundle.ffffffffffffffff.js": "the viewer has no such file",
            # Scripts' fetches do not want the page.
            "/viewer": "the viewer has no such file",
            # Unknown DICOMweb routes stay DICOMweb's, even for a browser.
            "/dicomweb/nothing": "is not a DICOMweb route",
            "/tenants/alpha/dicomweb/nothing": "is not a DICOMweb route",
            "/tenants/a%20b/": "no tenant 'a b'",
            # Nothing outside the folder, nothing hidden in it.
            "/assets/..%2F..%2Fsecret.txt": "the viewer has no such file",
            "/.complete": "the viewer has no such file",
            "/escape.txt": "the viewer has no such file",
            "/%00.js": "the viewer has no such file",
        }
        for path, reason in cases.items():
            accept = "text/html" if "dicomweb" in path or "tenants" in path else "application/json"
            # encoded=True: the path goes out exactly as written, %2F and all.
            async with client.get(URL(base + path, encoded=True), headers={"Accept": accept}) as response:
                assert response.status == 404, path
                assert reason in (await response.json())["error"], path

    _serve(_settings(tmp_path, PACSFLOW_VIEWER=str(dist)), check)


CHROMIUM_NAVIGATION = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
    "*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


def test_only_a_request_that_names_html_gets_the_page(tmp_path: Path) -> None:
    """A probe or a script aimed at a wrong path (curl's ``*/*``, or no Accept at all) must not
    pass on the viewer's page: a load balancer would take it for a healthy /ready."""
    dist = _dist(tmp_path / "dist")

    async def check(client: ClientSession, base: str) -> None:
        for path in ("/ready", "/metrics", "/healthz", "/tenants/alpha/ready"):
            for headers in ({"Accept": "*/*"}, {}, {"Accept": "application/json, */*;q=0.5"}):
                # skip_auto_headers: aiohttp would send Accept: */* where the case has none.
                async with client.get(base + path, headers=headers, skip_auto_headers=["Accept"]) as response:
                    assert response.status == 404, (path, headers)
                    assert response.content_type == "application/json", (path, headers)
                    assert "the viewer has no such file" in (await response.json())["error"], (path, headers)
            # A browser's navigation names text/html: the single-page application's route.
            async with client.get(base + path, headers={"Accept": CHROMIUM_NAVIGATION}) as response:
                assert response.status == 200, path
                assert await response.read() == PAGE
        # text/html refused (q=0) is not asked for.
        async with client.get(base + "/viewer", headers={"Accept": "text/html;q=0, */*"}) as response:
            assert response.status == 404

    _serve(_settings(tmp_path, PACSFLOW_VIEWER=str(dist)), check)

    async def not_installed(client: ClientSession, base: str) -> None:
        async with client.get(base + "/ready", skip_auto_headers=["Accept"]) as response:
            assert response.status == 404
        async with client.get(base + "/ready", headers={"Accept": "*/*"}) as response:
            assert response.status == 404
        async with client.get(base + "/", headers={"Accept": CHROMIUM_NAVIGATION}) as response:
            assert response.status == 503
            assert "the viewer is not installed" in await response.text()

    _serve(_settings(tmp_path), not_installed, release_dir=tmp_path / "not-installed")


def test_a_missing_viewer_is_explained_and_off_means_no_viewer(tmp_path: Path) -> None:
    async def missing(client: ClientSession, base: str) -> None:
        async with client.get(base + "/", headers={"Accept": "text/html"}) as response:
            assert response.status == 503
            text = await response.text()
            assert "the viewer is not installed" in text
            assert "make install" in text and "PACSFLOW_VIEWER=off" in text
        async with client.get(base + "/dicomweb/nothing") as response:
            assert response.status == 404

    # "on" looks where `make install` puts the release; here, an empty folder.
    _serve(_settings(tmp_path), missing, release_dir=tmp_path / "not-installed")

    async def off(client: ClientSession, base: str) -> None:
        async with client.get(base + "/", headers={"Accept": "text/html"}) as response:
            assert response.status == 404
            assert "the viewer is turned off (PACSFLOW_VIEWER=off)" in (await response.json())["error"]

    _serve(_settings(tmp_path, PACSFLOW_VIEWER="off"), off, release_dir=_dist(tmp_path / "dist"))


def test_a_folder_that_is_no_ohif_build_stops_the_web_server_with_the_fix(tmp_path: Path) -> None:
    settings = _settings(tmp_path, PACSFLOW_VIEWER=str(tmp_path / "empty"))
    with pytest.raises(PacsflowError, match=r"no index\.html there; give the dist folder of an OHIF build"):
        site.add_routes(web.Application(), settings)


def test_the_image_pins_the_same_release() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    pinned = re.search(r"^ARG OHIF_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert pinned and pinned.group(1) == release.VERSION


def _policy(value: str) -> dict[str, list[str]]:
    directives = [d.strip().split() for d in value.split(";")]
    return {d[0]: d[1:] for d in directives}


def test_pages_and_the_configuration_carry_the_security_headers(tmp_path: Path) -> None:
    dist = _dist(tmp_path / "dist")
    (dist / "silent-refresh.html").write_text("<script src='https://cdn.example/shim.js'></script>")
    inline = "'sha256-" + base64.b64encode(hashlib.sha256(INLINE.encode()).digest()).decode() + "'"

    async def check(client: ClientSession, base: str) -> None:
        html = {"Accept": "text/html"}
        answers = []
        for path in ("/", "/viewer", "/tenants/alpha/", "/app-config.js", "/silent-refresh.html"):
            async with client.get(base + path, headers=html) as response:
                assert response.status == 200, path
                answers.append(response.headers)
        async with client.get(base + "/", headers={**html, "If-None-Match": answers[0]["ETag"]}) as response:
            assert response.status == 304
            answers.append(response.headers)
        for headers in answers:
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Referrer-Policy"] == "no-referrer"
            policy = _policy(headers["Content-Security-Policy"])
            assert policy == {
                "default-src": ["'self'"],
                # The page's one inline script, by its hash; no 'unsafe-inline', no 'unsafe-eval'.
                "script-src": ["'self'", "'wasm-unsafe-eval'", inline],
                "style-src": ["'self'", "'unsafe-inline'"],
                "img-src": ["'self'", "data:", "blob:"],
                "font-src": ["'self'", "data:"],
                "media-src": ["'self'", "blob:"],
                # Auth off, no public URL: nothing but pacsflow itself.
                "connect-src": ["'self'"],
                "worker-src": ["'self'", "blob:"],
                "object-src": ["'none'"],
                "base-uri": ["'self'"],
                "form-action": ["'self'"],
                "frame-ancestors": ["'none'"],
            }
        # Scripts, styles and images are no documents: a policy there would mean nothing.
        async with client.get(base + "/" + BUNDLE) as response:
            assert "Content-Security-Policy" not in response.headers

    _serve(_settings(tmp_path, PACSFLOW_VIEWER=str(dist)), check)


def test_with_sign_in_the_page_may_fetch_from_the_issuer_and_the_public_origin(tmp_path: Path) -> None:
    dist = _dist(tmp_path / "dist")
    settings = _settings(
        tmp_path,
        PACSFLOW_VIEWER=str(dist),
        PACSFLOW_AUTH="jwt",
        PACSFLOW_OIDC_ISSUER="https://login.example.org:8443/realms/pacs",
        PACSFLOW_PUBLIC_URL="https://pacs.example.org/",
    )

    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/tenants/alpha/", headers={"Accept": "text/html"}) as response:
            policy = _policy(response.headers["Content-Security-Policy"])
        # oidc-client-ts fetches the issuer's discovery document and its token endpoint; DICOMweb
        # goes to the public URL.
        assert policy["connect-src"] == [
            "'self'",
            "https://pacs.example.org",
            "https://login.example.org:8443",
        ]
        async with client.get(base + "/app-config.js") as response:
            script = await response.text()
        assert '"authority": "https://login.example.org:8443/realms/pacs"' in script
        assert '"client_id": "pacsflow-viewer"' in script
        assert '"scope": "openid profile dicomweb.read dicomweb.write"' in script

    _serve(settings, check)


def test_the_sign_in_asks_for_the_scopes_that_grant_the_viewer_its_rights(tmp_path: Path) -> None:
    off = _settings(tmp_path)
    assert site.sign_in(off) is None
    on = _settings(
        tmp_path,
        PACSFLOW_AUTH="jwt",
        PACSFLOW_OIDC_ISSUER="https://login.example.org",
        PACSFLOW_OIDC_CLIENT_ID="ohif",
        PACSFLOW_AUTH_SCOPES="read=pacs:read,write=pacs:write,delete=pacs:delete,admin=pacs:admin",
    )
    assert site.sign_in(on) == config.SignIn("https://login.example.org", "ohif", ("pacs:read", "pacs:write"))


def test_the_not_installed_page_carries_the_security_headers(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.get(base + "/", headers={"Accept": "text/html"}) as response:
            assert response.status == 503
            assert response.headers["X-Frame-Options"] == "DENY"
            policy = _policy(response.headers["Content-Security-Policy"])
            # The page has no script at all.
            assert policy["script-src"] == ["'self'", "'wasm-unsafe-eval'"]
            assert policy["frame-ancestors"] == ["'none'"]

    _serve(_settings(tmp_path), check, release_dir=tmp_path / "not-installed")
