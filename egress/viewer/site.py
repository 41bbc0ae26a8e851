"""The viewer at ``/``: OHIF's files, its generated configuration, and its pages.

OHIF is a single-page application: ``/viewer?StudyInstanceUIDs=...`` or a tenant's
``/tenants/<t>/`` is the same ``index.html``, whose script reads the address. A request is given
that page when a browser navigates to it (its Accept names ``text/html``, which ``*/*`` does not,
and the last path segment has no dot, the rule of connect-history-api-fallback); anything else
that names no file is a 404: a missing script fails as a 404 rather than as HTML parsed as
JavaScript, and a probe of a wrong path (``curl /ready``) fails rather than passing on the page.
DICOMweb paths never reach here with a page: an unknown DICOMweb route stays a JSON 404.

Names with webpack's content hash (``app.bundle.0f6159c501addfe9.js``) never change, so browsers
keep them a year without asking; every other file is revalidated (ETag) on each load.

Pages carry a Content-Security-Policy that the OHIF release runs under (tests/e2e/test_viewer.py
and test_viewer_signin.py fail on any violation): scripts from pacsflow only, plus the page's own
inline scripts by their hashes; WebAssembly for the image codecs; fetches to pacsflow and, with
sign-in, to the issuer; never framed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from egress.viewer import config
from egress.viewer.release import VERSION, installed_dir, is_installed
from egress.wado import accept
from egress.wado.conditional import held, not_modified
from egress.wado.errors import NotFound
from egress.wado.urls import is_dicomweb
from pipeline import log
from pipeline.errors import PacsflowError
from pipeline.models.identifiers import InvalidIdentifier, TenantId
from pipeline.settings import Settings

_log = log.get(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_HASHED = re.compile(r"(?:^|\.)[0-9a-f]{16,}\.[a-z0-9]+$")
_TENANT = re.compile(r"^tenants/([^/]*)(?:/(.*))?$", re.DOTALL)
REFERRER_POLICY = "no-referrer"
FRAME_OPTIONS = "DENY"


def cache_control(name: str) -> str:
    return IMMUTABLE if _HASHED.search(name) else REVALIDATE


def _page_like(path: str) -> bool:
    return "." not in path.rsplit("/", 1)[-1]


def wants_page(request: web.Request, path: str) -> bool:
    # text/html named, not reached through */*: browsers name it when they navigate, while curl,
    # scripts and health probes send */* (or nothing), and a probe aimed at a wrong path must fail.
    named = any(r.media_type == "text/html" for r in accept.parse(request.headers.get(hdrs.ACCEPT)))
    return named and _page_like(path)


class _InlineScripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self._inside: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._inside = []

    def handle_data(self, data: str) -> None:
        if self._inside is not None:
            self._inside.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._inside is not None:
            self.scripts.append("".join(self._inside))
            self._inside = None


def inline_script_hashes(page: bytes) -> list[str]:
    """CSP sources allowing exactly the page's inline scripts (OHIF's sets ``window.PUBLIC_URL``)."""
    parser = _InlineScripts()
    parser.feed(page.decode("utf-8"))
    parser.close()
    digests = (hashlib.sha256(script.encode("utf-8")).digest() for script in parser.scripts)
    return list(dict.fromkeys(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(page: bytes, connect: Iterable[str] = ()) -> str:
    """The policy of one OHIF build's pages; ``connect``: origins fetched beyond pacsflow's own."""
    directives = {
        "default-src": ["'self'"],
        # No 'unsafe-eval', no 'unsafe-inline': OHIF needs neither. WebAssembly (its image codecs,
        # onnxruntime for its segmentation tools) compiles only with 'wasm-unsafe-eval', which
        # lets no JavaScript be evaluated.
        "script-src": ["'self'", "'wasm-unsafe-eval'", *inline_script_hashes(page)],
        # OHIF's components add <style> elements as they run; chromium refuses them without it.
        "style-src": ["'self'", "'unsafe-inline'"],
        # Thumbnails and rendered frames are shown as blob: URLs, icons as data: URLs.
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'", "data:"],
        "media-src": ["'self'", "blob:"],
        "connect-src": ["'self'", *dict.fromkeys(connect)],
        # The decoders run in workers, some built from blob: URLs.
        "worker-src": ["'self'", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        # OHIF's iframe token renewal (silent-refresh.html) is not used: oidc-client-ts renews with
        # the refresh token, a fetch. So no page of the viewer is ever framed.
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


def security_headers(page: bytes, connect: Iterable[str] = ()) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(page, connect),
        # Browsers before CSP's frame-ancestors.
        "X-Frame-Options": FRAME_OPTIONS,
        # A study's address (its UIDs) is not told to any site the page links to or loads from.
        "Referrer-Policy": REFERRER_POLICY,
    }


def sign_in(settings: Settings) -> config.SignIn | None:
    """How the viewer signs in, with ``PACSFLOW_AUTH=jwt``: at the issuer whose tokens the DICOMweb
    routes require, asking for the scopes of the viewer's rights (read, and write for uploads)."""
    if settings.auth != "jwt":
        return None
    scopes = settings.auth_scopes
    return config.SignIn(settings.oidc_issuer, settings.oidc_client_id, (scopes["read"], scopes["write"]))


class _Generated:
    """A small text answer built once: the page and the configuration. A few kilobytes, sent as
    they are: one representation, one ETag."""

    def __init__(self, body: bytes, content_type: str, headers: Mapping[str, str]) -> None:
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.etag = hashlib.sha256(body).hexdigest()[:20]

    def response(self, request: web.Request) -> web.StreamResponse:
        if held(request, self.etag):
            response = not_modified(self.etag)
        else:
            response = web.Response(body=self.body, content_type=self.content_type, charset="utf-8")
        response.etag = self.etag
        response.headers[hdrs.CACHE_CONTROL] = REVALIDATE
        for name, value in self.headers.items():
            response.headers[name] = value
        return response


class Site:
    """One OHIF build, served."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder.resolve()
        page = (folder / "index.html").read_bytes()
        public = settings.public_base if settings.public_url else None
        signing_in = sign_in(settings)
        # A public URL on another origin than the page's (a proxy rewriting hosts) is where the
        # configuration sends DICOMweb requests.
        connect = [origin(url) for url in (public, signing_in.issuer if signing_in else None) if url]
        self.headers = security_headers(page, connect)
        self.page = _Generated(page, "text/html", self.headers)
        self.config = _Generated(config.served(public, signing_in).encode(), "text/javascript", self.headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if is_dicomweb(request.path):
            raise NotFound(f"{request.path} is not a DICOMweb route (see the README's list of endpoints)")
        tenant = _TENANT.match(path)
        if tenant:
            _check_tenant(tenant.group(1))
            path = tenant.group(2) or ""
        if path == "app-config.js":
            return self.config.response(request)
        file = self._file(path)
        if file is not None:
            headers: dict[str, str] = {hdrs.CACHE_CONTROL: cache_control(file.name)}
            if file.suffix == ".html":
                # Other pages of the build (silent-refresh.html loads a script from a CDN) run
                # under the same policy: nothing but pacsflow's own scripts in its origin.
                headers.update(self.headers)
            return web.FileResponse(file, headers=headers)
        if wants_page(request, path):
            return self.page.response(request)
        hint = "; its pages go to requests that accept text/html" if _page_like(path) else ""
        raise NotFound(f"{request.path}: the viewer has no such file{hint}")

    def _file(self, path: str) -> Path | None:
        # A dot first refuses ".." as well as hidden files; a NUL cannot be in a file name.
        if not path or "\x00" in path or any(part.startswith(".") for part in path.split("/")):
            return None
        candidate = (self.folder / path).resolve()
        if candidate.is_relative_to(self.folder) and candidate.is_file():
            return candidate
        return None


def _check_tenant(name: str) -> None:
    try:
        TenantId(name)
    except InvalidIdentifier as exc:
        raise NotFound(f"no tenant {name!r}: {exc}") from exc


_NOT_INSTALLED = """<!doctype html><meta charset="utf-8"><title>pacsflow</title>
<h1>pacsflow: the viewer is not installed</h1>
<p>DICOMweb works: <a href="/dicomweb/studies">/dicomweb/studies</a>.
<p>The OHIF viewer comes from the npm registry. Install Node.js with npm (<code>apt-get install
npm</code>) and run <code>make install</code>, then restart pacsflow. To have no viewer and no
such page, set <code>PACSFLOW_VIEWER=off</code>.
"""


_NOT_INSTALLED_HEADERS = security_headers(_NOT_INSTALLED.encode())


def add_routes(app: web.Application, settings: Settings, release_dir: Path | None = None) -> None:
    """The viewer's routes; add them last: they answer every path nothing else does.

    ``release_dir`` is where ``PACSFLOW_VIEWER=on`` looks (default: where ``make install`` puts
    the release)."""
    if settings.viewer == "off":

        async def off(request: web.Request) -> web.StreamResponse:
            raise NotFound("the viewer is turned off (PACSFLOW_VIEWER=off); DICOMweb is at /dicomweb")

        app.router.add_get("/", off)
        return
    on = settings.viewer == "on"
    folder = (release_dir or installed_dir()) if on else Path(settings.viewer)
    if not on and not (folder / "index.html").is_file():
        raise PacsflowError(
            f"PACSFLOW_VIEWER={folder}: no index.html there; give the dist folder of an OHIF build, "
            "or `on` (the release make install fetched) or `off`"
        )
    if on and not is_installed(folder):
        _log.warning("viewer_not_installed", expected=str(folder), fix="install npm, then run make install")

        async def not_installed(request: web.Request) -> web.StreamResponse:
            path = request.match_info["path"]
            if is_dicomweb(request.path) or not wants_page(request, path):
                raise NotFound(f"{request.path}: no such route")
            return web.Response(
                status=503, text=_NOT_INSTALLED, content_type="text/html", headers=_NOT_INSTALLED_HEADERS
            )

        app.router.add_get("/{path:.*}", not_installed)
        return
    site = Site(folder, settings)
    _log.info("viewer_served", folder=str(folder), version=VERSION if on else "own build")
    app.router.add_get("/{path:.*}", site.handle)
