"""The capabilities transaction (``egress.wado.capabilities``) over real HTTP, on an application with
the real DICOMweb routes: its two forms, that it is generated from the router, and that a CORS
preflight is still one. That every key and route it lists really answers is checked against a real
stack (tests/integration/test_capabilities.py)."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, hdrs, web
from aiohttp.test_utils import TestServer

from egress.auth.guard import JUDGE, guard
from egress.auth.keys import IssuerKeys
from egress.auth.tokens import TokenJudge
from egress.wado import capabilities, delete, metadata, qido, retrieve, stow
from egress.wado.capabilities import OWN_NS, WADL, WADL_NS
from egress.wado.cors import cors
from egress.wado.errors import errors
from egress.wado.keys import SETTINGS
from egress.wado.urls import PREFIXES
from pipeline import settings as pacsflow_settings
from pipeline.stores.search import BY_KEYWORD, Level

VIEWER = "https://viewer.example.org"
ISSUER = "https://id.example.org/realms/hospital"
JWT = {"PACSFLOW_AUTH": "jwt", "PACSFLOW_OIDC_ISSUER": ISSUER, "PACSFLOW_OIDC_AUDIENCE": "pacsflow"}
Check = Callable[[ClientSession, str], Awaitable[None]]
W = f"{{{WADL_NS}}}"


async def _changes(request: web.Request) -> web.Response:
    return web.Response(text="[]")


def _serve(tmp_path: Path, check: Check, **env: str) -> None:
    loaded = pacsflow_settings.load({"PACSFLOW_DATA_DIR": str(tmp_path), **env})

    async def main() -> None:
        app = web.Application()
        app.middlewares.extend([cors(app, (VIEWER,)), errors])  # the order create_app uses
        app[SETTINGS] = loaded
        for module in (retrieve, metadata, qido, stow, delete):
            module.add_routes(app, PREFIXES)
        capabilities.add_routes(app, PREFIXES)
        # A route added after the capabilities' own, as another module would: listed all the same.
        app.router.add_get("/dicomweb/changes", _changes)
        async with ClientSession() as client:
            if loaded.auth == "jwt":
                app.middlewares.append(guard(loaded))
                app[JUDGE] = TokenJudge(loaded, IssuerKeys(loaded, client))  # never asked: no token comes
            async with TestServer(app) as server:
                await check(client, str(server.make_url("")).rstrip("/"))

    asyncio.run(main())


def _json(body: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(body)
    return loaded


def test_wadl_is_the_default_and_lists_every_route_and_key(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.options(base + "/dicomweb") as response:
            assert response.status == 200
            assert response.content_type == WADL
            assert response.headers[hdrs.ALLOW] == "OPTIONS"
            root = ET.fromstring(await response.read())  # noqa: S314 (our own answer)
        assert root.tag == f"{W}application"
        (resources,) = root.findall(f"{W}resources")
        assert resources.get("base") == base + "/dicomweb/"
        paths = {r.get("path"): r for r in resources.findall(f"{W}resource")}
        assert {"", "studies", "studies/{study}", "studies/{study}/series/{series}/metadata"} <= set(paths)
        assert "changes" in paths  # added after the capabilities' routes
        assert not any(p.startswith("{") for p in paths)  # the catch-all OPTIONS is not a resource
        study = paths["studies/{study}"]
        assert [p.get("name") for p in study.findall(f"{W}param")] == ["study"]
        methods = {m.get("name"): m for m in study.findall(f"{W}method")}
        assert set(methods) == {"GET", "HEAD", "POST", "DELETE"}
        produced = {r.get("mediaType") for r in methods["GET"].iter(f"{W}representation")}
        assert produced == {'multipart/related; type="application/dicom"', "application/zip"}
        search = {m.get("name"): m for m in paths["studies"].findall(f"{W}method")}["GET"]
        keys = {p.get("name") for p in search.iter(f"{W}param")}
        study_keys = {k for k, a in BY_KEYWORD.items() if a.match is not None and a.level <= Level.STUDY}
        assert keys == study_keys | set(qido.CONTROL)
        own = root.find(f"{{{OWN_NS}}}capabilities")
        assert own is not None
        limits = {e.get("name"): e.get("value") for e in own.iter(f"{{{OWN_NS}}}limit")}
        assert limits["qido_max_limit"] == "7" and limits["stow_max_request_bytes"] == "123456"
        assert own.find(f"{{{OWN_NS}}}auth").get("mode") == "off"  # type: ignore[union-attr]

    _serve(tmp_path, check, PACSFLOW_QIDO_MAX_LIMIT="7", PACSFLOW_STOW_MAX_REQUEST_BYTES="123456")


def test_json_when_asked_with_keys_syntaxes_and_auth(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        for asked in ("application/json", "application/dicom+json", f"{WADL};q=0.5, application/json"):
            async with client.options(base + "/dicomweb", headers={hdrs.ACCEPT: asked}) as response:
                assert response.status == 200, asked
                assert response.content_type == asked.split(", ")[-1], asked
        async with client.options(
            base + "/tenants/north/dicomweb", headers={hdrs.ACCEPT: "application/json"}
        ) as r:
            described = _json(await r.read())
        assert described["root"] == base + "/tenants/north/dicomweb"
        keys = {k["keyword"]: k for k in described["queryKeys"]}
        assert set(keys) == {k for k, a in BY_KEYWORD.items() if a.match is not None}
        assert keys["AccessionNumber"] == {
            "keyword": "AccessionNumber",
            "tag": "00080050",
            "level": "study",
            "match": "text",
            "matching": BY_KEYWORD["AccessionNumber"].match.value,  # type: ignore[union-attr]
        }
        assert "NumberOfStudyRelatedSeries" not in keys  # returned, never matched
        syntaxes = [s["uid"] for s in described["retrieve"]["transferSyntaxes"]]
        assert syntaxes[:3] == ["*", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        assert "1.2.840.10008.1.2.1.99" not in syntaxes  # deflated: read, never written
        assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"} <= {
            s["uid"] for s in described["store"]["transferSyntaxes"]
        }
        # Routes of the tenant root only, none of the default root's twice.
        paths = [r["path"] for r in described["resources"]]
        assert len(paths) == len(set(paths)) and "changes" not in paths
        assert described["auth"] == {
            "mode": "jwt",
            "issuer": ISSUER,
            "scopes": {
                "read": "dicomweb.read",
                "write": "dicomweb.write",
                "delete": "dicomweb.delete",
                "admin": "dicomweb.admin",
            },
        }

    _serve(
        tmp_path, check, PACSFLOW_AUTH="jwt", PACSFLOW_OIDC_ISSUER=ISSUER, PACSFLOW_OIDC_AUDIENCE="pacsflow"
    )


def test_a_resource_under_the_root_says_its_methods_and_an_unknown_one_is_404(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.options(base + "/dicomweb/studies/1.2.3/series") as response:
            assert response.status == 200
            assert response.headers[hdrs.ALLOW] == "GET, HEAD, OPTIONS"
            application = ET.fromstring(await response.read())  # noqa: S314 (our own answer)
            assert application.tag == f"{W}application"
        async with client.options(base + "/tenants/t1/dicomweb/studies/1.2.3") as response:
            assert response.headers[hdrs.ALLOW] == "DELETE, GET, HEAD, OPTIONS, POST"
        async with client.options(base + "/dicomweb/nothing/here") as response:
            assert response.status == 404
            assert "no such resource" in _json(await response.read())["error"]
        async with client.options(base + "/dicomweb", headers={hdrs.ACCEPT: "image/png"}) as response:
            assert response.status == 406
        # Other methods: a path nothing serves is a 404, a path served by other methods a 405.
        async with client.get(base + "/dicomweb/studies/1.2.3/frames") as response:
            assert response.status == 404
            assert "no such resource" in _json(await response.read())["error"]
        async with client.get(base + "/tenants/t1/dicomweb/nothing") as response:
            assert response.status == 404
        async with client.post(base + "/dicomweb/studies/1.2.3/series") as response:
            assert response.status == 405
            assert response.headers[hdrs.ALLOW] == "GET,HEAD,OPTIONS"
        async with client.get(base + "/dicomweb") as response:
            assert response.status == 405

    _serve(tmp_path, check)


def test_needs_no_token_but_a_preflight_stays_a_preflight(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        async with client.options(base + "/dicomweb", headers={hdrs.ORIGIN: VIEWER}) as response:
            assert response.status == 200 and response.content_type == WADL
            assert response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] == VIEWER
        preflight = {hdrs.ORIGIN: VIEWER, hdrs.ACCESS_CONTROL_REQUEST_METHOD: "GET"}
        async with client.options(base + "/dicomweb", headers=preflight) as response:
            assert response.status == 204 and not await response.read()
            assert hdrs.ACCESS_CONTROL_ALLOW_METHODS in response.headers
        async with client.get(base + "/dicomweb/studies") as response:
            assert response.status == 401  # everything else still needs one

    _serve(
        tmp_path, check, PACSFLOW_AUTH="jwt", PACSFLOW_OIDC_ISSUER=ISSUER, PACSFLOW_OIDC_AUDIENCE="pacsflow"
    )
