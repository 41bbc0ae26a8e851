"""Which tenant a request is for, and the base URL the client reaches us by."""

from __future__ import annotations

import re

from aiohttp import web

from egress.wado.errors import BadRequest
from pipeline.errors import PacsflowError
from pipeline.metadata import dicomweb_root
from pipeline.models import TenantId, Uid
from pipeline.settings import Settings

PREFIXES = ("/dicomweb", "/tenants/{tenant}/dicomweb")
"""Where DICOMweb is: the default tenant's, and every other tenant's."""
_DICOMWEB_PATH = re.compile(r"^/(?:tenants/[^/]*/)?dicomweb(?:/|$)")


def is_dicomweb(path: str) -> bool:
    """Whether a request's path is under one of the PREFIXES, routed or not."""
    return _DICOMWEB_PATH.match(path) is not None


def tenant_of(request: web.Request, settings: Settings) -> TenantId:
    """``/dicomweb/...`` is the default tenant's; ``/tenants/<tenant>/dicomweb/...`` another's."""
    name = request.match_info.get("tenant")
    if name is None:
        return settings.default_tenant
    try:
        return TenantId(name)
    except PacsflowError as exc:
        raise BadRequest(str(exc)) from None


def uid(request: web.Request, name: str, what: str) -> Uid:
    try:
        return Uid(request.match_info[name], what)
    except PacsflowError as exc:
        raise BadRequest(str(exc)) from None


def public_base(request: web.Request, settings: Settings) -> str:
    """``PACSFLOW_PUBLIC_URL``; else what a proxy says (``Forwarded``, ``X-Forwarded-*``); else
    the scheme and host the request came to."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    forwarded = request.forwarded[0] if request.forwarded else {}
    proto = forwarded.get("proto") or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    host = forwarded.get("host") or request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    prefix = request.headers.get("X-Forwarded-Prefix", "").strip().rstrip("/")
    scheme = proto or request.scheme
    return f"{scheme}://{host or _direct_host(request, scheme)}{prefix}"


def _direct_host(request: web.Request, scheme: str) -> str:
    """The Host header, with the port the connection came to when the header leaves it out.

    dicomweb-client sends ``Host: 127.0.0.1`` to ``http://127.0.0.1:8080``: taken as it is, every
    BulkDataURI would point at port 80.
    """
    host = request.host
    if host.endswith("]") or ":" not in host:  # no port (an IPv6 literal ends with "]" without one)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
        if port and port != {"http": 80, "https": 443}.get(scheme):
            return f"{host}:{port}"
    return host


def root_for(request: web.Request, settings: Settings, tenant: TenantId) -> str:
    """The tenant's DICOMweb root as this client reaches it: what BulkDataURIs start with."""
    return dicomweb_root(public_base(request, settings), tenant, settings.default_tenant)
