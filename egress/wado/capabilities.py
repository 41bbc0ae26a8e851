"""The capabilities transaction (PS3.18 8.9): ``OPTIONS`` on the DICOMweb root, or on any resource
under it, answers what this server does, as WADL (``application/vnd.sun.wadl+xml``, the default) or
JSON (``application/json``, ``application/dicom+json``).

Everything in it is read from what serves the requests, never written down twice: the resources and
their methods from the application's router (a route added anywhere appears here by itself), the
QIDO-RS keys from the matcher's catalogue (``pipeline.stores.search``), the transfer syntaxes from
the functions that decide them, the limits and the authentication from the settings.

It needs no token, whatever ``PACSFLOW_AUTH`` says (the guard lets every ``OPTIONS`` through, as
PS3.18 allows): it is the same for every tenant and holds nothing of theirs, not even whether one
exists. A CORS preflight (``Access-Control-Request-Method``) is still a preflight (``cors``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import hdrs, web
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian

from egress.wado import accept, delete, metadata, qido, rendering, retrieve, stow, transcode, zipped
from egress.wado.errors import NotAcceptable, NotFound
from egress.wado.keys import SETTINGS
from egress.wado.urls import PREFIXES, root_for, tenant_of
from pipeline.conversion import COMPRESSED_TARGETS, NATIVE
from pipeline.settings import Settings
from pipeline.stores.search import BY_KEYWORD, Attribute, Level

WADL = "application/vnd.sun.wadl+xml"
JSON_TYPES = ("application/json", "application/dicom+json")
_WADL_ANSWERS = (WADL, "application/xml", "text/xml", "*/*", "application/*")
WADL_NS = "http://wadl.dev.java.net/2009/02"
OWN_NS = "urn:pacsflow:capabilities"
"""Where what WADL has no element for (syntaxes, limits, authentication) is said."""
LIMITS = (
    "qido_max_limit",
    "stow_max_part_bytes",
    "stow_max_request_bytes",
    "http_max_url_bytes",
    "http_max_header_bytes",
    "bulkdata_threshold",
)
"""Settings a client runs into, by their ``Settings`` names."""
_TEMPLATE = re.compile(r"\{([^}:]+)[^}]*\}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Transaction:
    """What a handler is, for a client: its PS3.18 name and media types."""

    name: str
    produces: tuple[str, ...]
    consumes: tuple[str, ...] = ()
    level: Level | None = None
    """QIDO-RS: the level searched, whose keys (and those above it) can be matched."""


def _multipart(media_type: str) -> str:
    return f'multipart/related; type="{media_type}"'


_FRAME_TYPES = tuple(dict.fromkeys((retrieve.OCTETS, *accept.IMAGE_MEDIA_TYPES.values())))
_TRANSACTIONS: dict[Handler, Transaction] = {
    qido.studies: Transaction("Search for Studies", (qido.DICOM_JSON,), level=Level.STUDY),
    qido.series: Transaction("Search for Series", (qido.DICOM_JSON,), level=Level.SERIES),
    qido.instances: Transaction("Search for Instances", (qido.DICOM_JSON,), level=Level.INSTANCE),
    retrieve.retrieve: Transaction("Retrieve", (_multipart(retrieve.DICOM), zipped.MEDIA_TYPE)),
    retrieve.frame_list: Transaction("Retrieve Frames", tuple(_multipart(t) for t in _FRAME_TYPES)),
    retrieve.bulkdata: Transaction("Retrieve Bulkdata", (_multipart(retrieve.OCTETS),)),
    retrieve.rendered: Transaction("Retrieve Rendered", rendering.MEDIA_TYPES),
    retrieve.thumbnail: Transaction("Retrieve Thumbnail", rendering.MEDIA_TYPES),
    metadata.study_metadata: Transaction("Retrieve Metadata", (metadata.DICOM_JSON,)),
    metadata.series_metadata: Transaction("Retrieve Metadata", (metadata.DICOM_JSON,)),
    metadata.instance_metadata: Transaction("Retrieve Metadata", (metadata.DICOM_JSON,)),
    stow.store: Transaction("Store Instances", (stow.DICOM_JSON,), (_multipart(stow.PART_TYPE),)),
    delete.delete: Transaction("Delete", ("application/json",)),
}


def query_keys(level: Level = Level.INSTANCE) -> list[Attribute]:
    """The keys QIDO-RS matches in a search at ``level`` (those of the levels above it included)."""
    return [a for a in BY_KEYWORD.values() if a.match is not None and a.level <= level]


def retrieve_syntaxes() -> list[str]:
    """What an instance can be sent as: as stored (``*``), or converted by ``transcode``."""
    candidates = dict.fromkeys((*NATIVE, *COMPRESSED_TARGETS))
    return ["*", *(s for s in candidates if transcode.can_transcode(ExplicitVRLittleEndian, s))]


def _syntax(uid: str) -> dict[str, str]:
    return {"uid": uid, "name": "as stored" if uid == "*" else accept.syntax_name(uid)}


def _prefix_of(path: str) -> str | None:
    """The DICOMweb root a route's canonical path is under (the longest that fits)."""
    under = [p for p in PREFIXES if path == p or path.startswith(p + "/")]
    return max(under, key=len) if under else None


def _served(app: web.Application, prefix: str) -> list[tuple[str, list[web.AbstractRoute]]]:
    """(path under the root, its routes) of every resource the router has there; the root's own
    OPTIONS, not the catch-all that answers OPTIONS everywhere else."""
    found: dict[str, list[web.AbstractRoute]] = {}
    for resource in app.router.resources():
        canonical = resource.canonical
        if _prefix_of(canonical) != prefix:
            continue
        # One path may be several resources: routes added to it apart (GET here, DELETE there).
        path = canonical[len(prefix) :].lstrip("/")
        routes = [r for r in resource if r.handler is not unrouted and not (r.handler is answer and path)]
        if routes:
            found.setdefault(path, []).extend(routes)
    return list(found.items())


def describe(app: web.Application, settings: Settings, prefix: str, root: str) -> dict[str, Any]:
    """The capabilities of the DICOMweb root ``prefix`` (reached at ``root``), as a JSON document."""
    resources = []
    for path, routes in _served(app, prefix):
        methods = []
        for route in sorted(routes, key=lambda r: r.method):
            method: dict[str, Any] = {"method": route.method}
            transaction = _TRANSACTIONS.get(route.handler)
            if route.handler is answer:
                method |= {"transaction": "Capabilities", "produces": [WADL, *JSON_TYPES]}
            elif transaction is not None:
                method |= {"transaction": transaction.name, "produces": list(transaction.produces)}
                if transaction.consumes:
                    method["consumes"] = list(transaction.consumes)
                if transaction.level is not None:
                    method["queryKeys"] = [a.keyword for a in query_keys(transaction.level)]
                    method["queryControl"] = list(qido.CONTROL)
            methods.append(method)
        resources.append({"path": path, "parameters": _TEMPLATE.findall(path), "methods": methods})
    auth: dict[str, Any] = {"mode": settings.auth}
    if settings.auth == "jwt":
        auth |= {"issuer": settings.oidc_issuer, "scopes": dict(settings.auth_scopes)}
    return {
        "root": root,
        "resources": resources,
        "queryKeys": [
            {
                "keyword": a.keyword,
                "tag": a.tag,
                "level": a.level.name.lower(),
                "match": a.match.name.lower() if a.match else None,
                "matching": a.match.value if a.match else None,
            }
            for a in query_keys()
        ],
        "queryControl": list(qido.CONTROL),
        "retrieve": {
            "mediaTypes": [_multipart(retrieve.DICOM), zipped.MEDIA_TYPE],
            "transferSyntaxes": [_syntax(s) for s in retrieve_syntaxes()],
        },
        "frames": {"mediaTypes": list(_FRAME_TYPES)},
        "rendered": {"mediaTypes": list(rendering.MEDIA_TYPES)},
        "store": {
            "mediaTypes": [_multipart(stow.PART_TYPE)],
            # Any syntax whose header can be read (``pipeline.dicomfile.read_header``).
            "transferSyntaxes": [_syntax(s) for s in AllTransferSyntaxes],
        },
        "limits": {"qido_default_limit": qido.DEFAULT_LIMIT, **{n: getattr(settings, n) for n in LIMITS}},
        "auth": auth,
    }


def wadl(described: dict[str, Any]) -> bytes:
    """``describe``'s document as WADL, with what WADL has no element for in ``OWN_NS``."""
    ET.register_namespace("", WADL_NS)
    ET.register_namespace("pf", OWN_NS)

    def el(parent: ET.Element, tag: str, ns: str = WADL_NS, **attributes: str) -> ET.Element:
        return ET.SubElement(parent, f"{{{ns}}}{tag}", attributes)

    keys = {k["keyword"]: k for k in described["queryKeys"]}
    application = ET.Element(f"{{{WADL_NS}}}application")
    el(application, "doc", title="pacsflow DICOMweb")
    resources = el(application, "resources", base=described["root"].rstrip("/") + "/")
    for served in described["resources"]:
        resource = el(resources, "resource", path=served["path"])
        for name in served["parameters"]:
            el(resource, "param", name=name, style="template", type="xsd:string", required="true")
        for method in served["methods"]:
            node = el(resource, "method", name=method["method"])
            if "transaction" in method:
                el(node, "doc", title=method["transaction"])
            request = el(node, "request")
            for keyword in method.get("queryKeys", ()):
                key = keys[keyword]
                param = el(request, "param", name=keyword, style="query", type="xsd:string")
                el(param, "doc").text = f"{key['tag']}, {key['level']} level: {key['matching']}"
            for control in method.get("queryControl", ()):
                el(request, "param", name=control, style="query", type="xsd:string")
            for media_type in method.get("consumes", ()):
                el(request, "representation", mediaType=media_type)
            response = el(node, "response")
            for media_type in method.get("produces", ()):
                el(response, "representation", mediaType=media_type)
    own = el(application, "capabilities", OWN_NS)
    for section in ("retrieve", "frames", "rendered", "store"):
        part = el(own, section, OWN_NS)
        for media_type in described[section]["mediaTypes"]:
            el(part, "mediaType", OWN_NS).text = media_type
        for syntax in described[section].get("transferSyntaxes", ()):
            el(part, "transferSyntax", OWN_NS, uid=syntax["uid"], name=syntax["name"])
    limits = el(own, "limits", OWN_NS)
    for name, value in described["limits"].items():
        el(limits, "limit", OWN_NS, name=name, value=str(value))
    auth = described["auth"]
    el(own, "auth", OWN_NS, mode=auth["mode"], **({"issuer": auth["issuer"]} if "issuer" in auth else {}))
    body: bytes = ET.tostring(application, encoding="utf-8", xml_declaration=True)
    return body


def _form(header: str | None) -> str | None:
    """The media type to answer in, by the client's Accept; None: none it takes."""
    for media in accept.parse(header):
        if media.media_type in JSON_TYPES:
            return media.media_type
        if media.media_type in _WADL_ANSWERS:
            return WADL
    return None


async def _allowed(request: web.Request, prefix: str) -> set[str]:
    """The methods of the resources (other than this one) that the request's path is."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if _prefix_of(resource.canonical) != prefix or any(r.handler is answer for r in resource):
            continue
        _, methods = await resource.resolve(request)  # an OPTIONS request: no route matches it
        allowed |= methods
    return allowed


async def answer(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    prefix = _prefix_of(request.match_info.route.resource.canonical)  # type: ignore[union-attr]
    assert prefix is not None  # routed here only under a root (add_routes)
    allowed = {hdrs.METH_OPTIONS}
    if "path" in request.match_info:
        found = await _allowed(request, prefix)
        if not found:
            raise NotFound(f"{request.path}: no such resource (OPTIONS {prefix} lists them)")
        allowed |= found
    form = _form(request.headers.get(hdrs.ACCEPT))
    if form is None:
        raise NotAcceptable(
            f"capabilities are {WADL} or {' or '.join(JSON_TYPES)}; "
            f"Accept {request.headers.get(hdrs.ACCEPT)!r} excludes them"
        )
    root = root_for(request, settings, tenant_of(request, settings))
    described = describe(request.app, settings, prefix, root)
    body = wadl(described) if form == WADL else orjson.dumps(described)
    response = web.Response(body=body, content_type=form)
    response.headers[hdrs.ALLOW] = ", ".join(sorted(allowed))
    response.enable_compression()
    return response


async def unrouted(request: web.Request) -> web.StreamResponse:
    """Any other method on a path under a root that no route took: 405 with the methods the path
    has, or 404. Without it, the OPTIONS route alone would make every unknown path a 405."""
    prefix = _prefix_of(request.match_info.route.resource.canonical)  # type: ignore[union-attr]
    assert prefix is not None
    found = await _allowed(request, prefix)
    if not found:
        raise NotFound(f"{request.path}: no such resource (OPTIONS {prefix} lists them)")
    raise web.HTTPMethodNotAllowed(request.method, sorted(found | {hdrs.METH_OPTIONS}))


def add_routes(app: web.Application, prefixes: Iterable[str]) -> None:
    """``OPTIONS`` on each root and on every path under it; added after every other route, so that
    the catch-all answers only what none of them serves."""
    for prefix in prefixes:
        app.router.add_route(hdrs.METH_OPTIONS, prefix, answer)
        app.router.add_route(hdrs.METH_OPTIONS, f"{prefix}/{{path:.+}}", answer)
        app.router.add_route(hdrs.METH_ANY, f"{prefix}/{{path:.+}}", unrouted)
