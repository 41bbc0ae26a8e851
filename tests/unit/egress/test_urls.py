"""Which tenant a request is for and the base URL the client reaches pacsflow by
(``egress.wado.urls``): behind proxies (``Forwarded``, ``X-Forwarded-*``) and directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer, make_mocked_request

from egress.wado.errors import BadRequest
from egress.wado.urls import is_dicomweb, public_base, root_for, tenant_of, uid
from pipeline import settings as settings_module
from pipeline.models import TenantId
from pipeline.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path / "var")})


def request(headers: dict[str, str], match_info: dict[str, str] | None = None) -> web.Request:
    return make_mocked_request("GET", "/dicomweb/studies", headers=headers, match_info=match_info or {})


@pytest.mark.parametrize(
    ("headers", "base"),
    [
        ({"Host": "pacs.local:8080"}, "http://pacs.local:8080"),
        # RFC 7239: the first proxy's view of the request.
        ({"Host": "10.0.0.5:8080", "Forwarded": "for=203.0.113.7;proto=https;host=pacs.example.org"},
         "https://pacs.example.org"),
        ({"Host": "10.0.0.5:8080",
          "Forwarded": 'proto=https;host="pacs.example.org:8443", proto=http;host=x'},
         "https://pacs.example.org:8443"),
        # The de facto headers: the first of each list, and a prefix the proxy serves us under.
        ({"Host": "10.0.0.5:8080", "X-Forwarded-Proto": "https, http",
          "X-Forwarded-Host": "pacs.example.org, b", "X-Forwarded-Prefix": "/pacs/"},
         "https://pacs.example.org/pacs"),
        ({"Host": "10.0.0.5:8080", "X-Forwarded-Proto": "https"}, "https://10.0.0.5:8080"),
        ({"Host": "10.0.0.5:8080", "X-Forwarded-Host": "pacs.example.org"}, "http://pacs.example.org"),
        # Forwarded wins over X-Forwarded-* where it says something; the prefix has no Forwarded twin.
        ({"Host": "h", "Forwarded": "proto=https;host=a.example", "X-Forwarded-Proto": "http",
          "X-Forwarded-Host": "b.example", "X-Forwarded-Prefix": "/p"}, "https://a.example/p"),
        ({"Host": "h", "Forwarded": "for=203.0.113.7", "X-Forwarded-Host": "b.example"}, "http://b.example"),
    ],
)  # fmt: skip
def test_public_base_follows_the_proxy(settings: Settings, headers: dict[str, str], base: str) -> None:
    assert public_base(request(headers), settings) == base


def test_public_url_overrides_what_the_request_says(tmp_path: Path) -> None:
    fixed = settings_module.load(
        {"PACSFLOW_DATA_DIR": str(tmp_path / "var"), "PACSFLOW_PUBLIC_URL": "https://pacs.example.org/"}
    )
    forwarded = request({"Host": "h", "Forwarded": "proto=http;host=evil.example"})
    assert public_base(forwarded, fixed) == "https://pacs.example.org"


def test_root_for_a_tenant(settings: Settings) -> None:
    proxied = request({"Host": "h", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org"})
    default = settings.default_tenant
    assert root_for(proxied, settings, default) == "https://pacs.example.org/dicomweb"
    assert root_for(proxied, settings, TenantId("alpha")) == "https://pacs.example.org/tenants/alpha/dicomweb"


def test_a_host_without_a_port_gets_the_port_the_connection_came_to(settings: Settings) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` to ``http://127.0.0.1:<port>``."""

    async def base(request: web.Request) -> web.Response:
        return web.Response(text=public_base(request, settings))

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/base", base)
        async with TestServer(app, host="127.0.0.1") as server, ClientSession() as client:
            port = server.port
            for host, expected in (
                ("127.0.0.1", f"http://127.0.0.1:{port}"),
                ("[::1]", f"http://[::1]:{port}"),  # an IPv6 literal ends with "]" when it has no port
                ("pacs.local:9999", "http://pacs.local:9999"),  # a port given is kept
            ):
                async with client.get(server.make_url("/base"), headers={"Host": host}) as response:
                    assert await response.text() == expected, host

    asyncio.run(main())


def test_the_tenant_of_a_request(settings: Settings) -> None:
    assert tenant_of(request({}), settings) == settings.default_tenant
    assert tenant_of(request({}, {"tenant": "alpha"}), settings) == "alpha"
    for bad in ("alpha\n", "al pha", "al/pha", "", "alpha\x00"):
        with pytest.raises(BadRequest, match="tenant is not valid"):
            tenant_of(request({}, {"tenant": bad}), settings)


def test_a_uid_of_a_request() -> None:
    assert uid(request({}, {"study": "1.2.3"}), "study", "StudyInstanceUID") == "1.2.3"
    for bad in ("1.2.3\n", "1.2.x", "1.2\r3", "1.2.\u0661"):
        with pytest.raises(BadRequest, match="StudyInstanceUID is not a valid UID"):
            uid(request({}, {"study": bad}), "study", "StudyInstanceUID")


@pytest.mark.parametrize(
    ("path", "dicomweb"),
    [
        ("/dicomweb", True),
        ("/dicomweb/", True),
        ("/dicomweb/studies", True),
        ("/tenants/alpha/dicomweb/studies/1.2.3", True),
        ("/tenants//dicomweb", True),  # an empty tenant is DICOMweb's to refuse, not the viewer's
        ("/dicomwebx", False),
        ("/health", False),
        ("/", False),
        ("/tenants/alpha/", False),
        ("/tenants/alpha/viewer/dicomweb", False),
        ("/viewer/dicomweb/studies", False),
    ],
)
def test_which_paths_are_dicomweb(path: str, dicomweb: bool) -> None:
    assert is_dicomweb(path) is dicomweb
