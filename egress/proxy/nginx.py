"""``pacsflow nginx-config``: nginx's whole configuration in one folder, from pacsflow's settings.

One template (``nginx.conf.template``) serves compose and the tests alike. The folder holds
``nginx.conf``, the viewer's files (``viewer/``, sent by nginx itself), a self-signed certificate
when none is given (``tls/``), and nginx's pid and temporary files: nginx runs from it unprivileged
with ``nginx -c <folder>/nginx.conf -g 'daemon off;'``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from egress.proxy import ACCEL_HANDSHAKE
from egress.proxy.certificate import ensure_self_signed
from egress.viewer.release import installed_dir, is_installed
from pipeline.errors import PacsflowError
from pipeline.settings import Settings

CONF = "nginx.conf"
VIEWER = "viewer"
TEMP_FOLDERS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
FAIL_TIMEOUT_S = 10
"""How long a replica that failed a connection is left out before nginx tries it again."""
_UPSTREAM = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*~^$\\-]+(?: [A-Za-z0-9_.*~^$\\-]+)*$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class Proxy:
    """What ``pacsflow nginx-config`` is told beyond the settings."""

    upstreams: tuple[str, ...]
    """``host:port`` of each ``pacsflow web``."""
    resolver: str = ""
    """A DNS server asked again every 10 s for the upstreams' addresses (Docker's 127.0.0.11);
    empty: they are resolved once, when nginx starts."""
    http_port: int = 8080
    https_port: int = 8443
    server_name: str = "_"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    user: str = ""
    """The user nginx's workers run as when it starts as root; empty: nginx's own default."""

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise PacsflowError("give at least one --upstream HOST:PORT (a `pacsflow web`)")
        bad = [
            u for u in self.upstreams if not _UPSTREAM.match(u) or not 0 < int(u.rsplit(":", 1)[1]) < 65536
        ]
        if bad:
            raise PacsflowError(f"{', '.join(map(repr, bad))}: an upstream is HOST:PORT, e.g. web:8080")
        for name, port in (("--http-port", self.http_port), ("--https-port", self.https_port)):
            if not 0 < port < 65536:
                raise PacsflowError(f"{name} {port} is not a TCP port (1-65535)")
        if self.http_port == self.https_port:
            raise PacsflowError(f"--http-port and --https-port are both {self.http_port}: give two ports")
        if not _SERVER_NAME.match(self.server_name):
            raise PacsflowError(f"--server-name {self.server_name!r}: host names separated by spaces, or _")
        if self.resolver and not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", self.resolver):
            raise PacsflowError(f"--resolver {self.resolver!r} is not an address (e.g. 127.0.0.11)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise PacsflowError(
                "--tls-cert and --tls-key go together: give both, or neither for a self-signed one"
            )
        if self.user and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.user):
            raise PacsflowError(f"--user {self.user!r} is not a user name")


def viewer_source(settings: Settings) -> Path | None:
    """The OHIF build the web processes serve, which nginx sends in their place; None: none."""
    if settings.viewer == "off":
        return None
    if settings.viewer == "on":
        folder = installed_dir()
        return folder if is_installed(folder) else None
    folder = Path(settings.viewer)
    return folder if (folder / "index.html").is_file() else None


def write(folder: Path, proxy: Proxy, settings: Settings, viewer: Path | None = None) -> Path:
    """Write the configuration (and what it needs) to ``folder``; return the ``nginx.conf``.

    ``viewer``: the OHIF build to copy (default: the one the settings name)."""
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    for name in TEMP_FOLDERS:
        (folder / "temp" / name).mkdir(parents=True, exist_ok=True)
    cert, key = proxy.tls_cert, proxy.tls_key
    if cert is None or key is None:
        cert, key = folder / "tls" / "cert.pem", folder / "tls" / "key.pem"
        names = [n for n in proxy.server_name.split() if n != "_" and not n.startswith(("~", "*", "."))]
        ensure_self_signed(cert, key, [*names, "localhost", "127.0.0.1"])
    else:
        for path in (cert, key):
            if not path.is_file():
                raise PacsflowError(f"{path}: no such file (--tls-cert and --tls-key are PEM files)")
    source = viewer if viewer is not None else viewer_source(settings)
    copied = _copy_viewer(source, folder / VIEWER) if source is not None else None
    conf = folder / CONF
    conf.write_text(render(folder, proxy, settings, cert.absolute(), key.absolute(), copied))
    return conf


def _copy_viewer(source: Path, target: Path) -> Path:
    """A fresh copy: files of an earlier release do not linger. Hidden files (the installer's
    marker) are not the viewer's, and pacsflow does not serve them either."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    return target


def render(folder: Path, proxy: Proxy, settings: Settings, cert: Path, key: Path, viewer: Path | None) -> str:
    """The text of ``nginx.conf``."""
    values = {
        "conf": str(folder / CONF),
        "dir": _checked(folder),
        "user": f"user {proxy.user};\n" if proxy.user else "",
        "resolver": (
            # Asked again every 10 s: replicas added by --scale, or restarted with a new address,
            # join the pool without a reload (the `resolve` parameter, nginx >= 1.27.3).
            f"\n    resolver {proxy.resolver} valid=10s ipv6=off;\n" if proxy.resolver else ""
        ),
        "servers": "\n".join(
            f"        server {upstream} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s"
            f"{' resolve' if proxy.resolver else ''};"
            for upstream in proxy.upstreams
        ),
        "http_port": str(proxy.http_port),
        "https_port": str(proxy.https_port),
        "https_authority_port": "" if proxy.https_port == 443 else f":{proxy.https_port}",
        "server_name": proxy.server_name,
        "tls_cert": _quoted(cert),
        "tls_key": _quoted(key),
        "client_max_body_size": str(settings.stow_max_request_bytes),
        "accel_location": _accel_location(settings),
        "accel_handshake": _accel_handshake(settings),
        "viewer_locations": _viewer_locations(viewer),
    }
    template = resources.files("egress.proxy").joinpath("nginx.conf.template").read_text()

    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


def _checked(path: Path, suffix: str = "") -> str:
    """A path to write inside double quotes; ``$`` would be read as a variable, the rest as syntax."""
    text = f"{path}{suffix}"
    if any(c in text for c in '"\\$\n{};'):
        raise PacsflowError(f"{text!r}: nginx's configuration cannot name a path with any of \" \\ $ {{ }} ;")
    return text


def _quoted(path: Path, suffix: str = "") -> str:
    return f'"{_checked(path, suffix)}"'


def _accel_handshake(settings: Settings) -> str:
    prefix = settings.http_accel_redirect
    if not prefix:
        return ""
    # pacsflow answers with X-Accel-Redirect only to requests that carry this, with its own prefix:
    # a client reaching pacsflow another way (or through an nginx made for another prefix) gets
    # the file itself, never an empty answer. Set here, so a client cannot send it through nginx.
    return f'        proxy_set_header {ACCEL_HANDSHAKE} "{prefix}";\n'


def _accel_location(settings: Settings) -> str:
    prefix = settings.http_accel_redirect
    if not prefix:
        return ""
    # The answer's Vary, ETag and others are not kept by nginx (Cache-Control and Content-Type
    # are): what a cache must know about them is said again here.
    vary_origin = "" if settings.cors_origins == ("*",) else "add_header Vary Origin;"
    return f"""
        # Current metadata files (PACSFLOW_HTTP_ACCEL_REDIRECT): pacsflow decided the tenant, the
        # rights and that the file is current, and answered with X-Accel-Redirect; nginx sends
        # the file, its .json.gz to gzip clients, with its own ETag and 304. nginx keeps no
        # header of that answer: the CORS one is given again.
        location ^~ {prefix} {{
            internal;
            alias {_quoted(settings.storage_root, "/")};
            gzip_static on;
            gzip_vary on;
            types {{ }}
            default_type application/dicom+json;
            add_header X-Served-By nginx;
            add_header X-Content-Type-Options nosniff;
            add_header X-Request-ID $upstream_http_x_request_id;
            add_header Access-Control-Allow-Origin $upstream_http_access_control_allow_origin;
            add_header Access-Control-Expose-Headers $upstream_http_access_control_expose_headers;
            {vary_origin}
        }}
"""


def _viewer_locations(viewer: Path | None) -> str:
    if viewer is None:
        return """
        location / {
            proxy_pass http://pacsflow_web;
        }
"""
    return f"""
        # The viewer's files, sent by nginx (with their .gz to gzip clients); a path that names
        # none (a page of the single-page application, /ready, /analytics) is pacsflow's.
        location ~ "^/tenants/[A-Za-z0-9_-]{{1,64}}/(?<viewer_file>.*)$" {{
            root {_quoted(viewer)};
            try_files /$viewer_file @pacsflow;
            gzip_static on;
            gzip_vary on;
            add_header Cache-Control $viewer_cache_control;
        }}
        location / {{
            root {_quoted(viewer)};
            try_files $uri @pacsflow;
            gzip_static on;
            gzip_vary on;
            add_header Cache-Control $viewer_cache_control;
        }}
"""
