"""OHIF's ``app-config.js`` as pacsflow writes it, run in node as the browser would run it: the
data source follows the page's tenant, and with ``PACSFLOW_AUTH=jwt`` OHIF signs its user in.

How OHIF then signs in (the redirect to the issuer, the callback, the token on every request) is
tests/e2e/test_viewer_signin.py, in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from egress.viewer import config
from pipeline.errors import PacsflowError
from tests.support.services import require

ISSUER = "https://login.example.org/realms/pacs"
SIGN_IN = config.SignIn(ISSUER, "pacsflow-viewer", ("dicomweb.read", "dicomweb.write"))


def _evaluate(script: str, href: str) -> dict[str, object]:
    """Run an app-config.js as the browser would, on a page at ``href``; return window.config."""
    node = shutil.which("node")
    require(node is not None, "Node.js (apt-get install npm; make install)")
    program = (
        "const vm = require('vm'); const url = new URL(process.argv[1]);"
        "const window = {location: {origin: url.origin, pathname: url.pathname, href: url.href}};"
        "vm.runInNewContext(require('fs').readFileSync(0, 'utf8'), {window});"
        "process.stdout.write(JSON.stringify(window.config));"
    )
    result = subprocess.run([str(node), "-e", program, href], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    evaluated: dict[str, object] = json.loads(result.stdout)
    return evaluated


def _source(evaluated: dict[str, object]) -> dict[str, object]:
    sources = evaluated["dataSources"]
    assert isinstance(sources, list) and len(sources) == 1
    assert evaluated["defaultDataSourceName"] == sources[0]["sourceName"]
    source: dict[str, object] = sources[0]["configuration"]
    return source


def test_the_served_configuration_follows_the_page_tenant() -> None:
    script = config.served(None)
    cases = {
        "http://pacs.local:8080/": ("http://pacs.local:8080/dicomweb", "/"),
        "http://pacs.local:8080/viewer": ("http://pacs.local:8080/dicomweb", "/"),
        "http://pacs.local:8080/tenants/alpha/": (
            "http://pacs.local:8080/tenants/alpha/dicomweb",
            "/tenants/alpha",
        ),
        "http://pacs.local:8080/tenants/alpha/viewer": (
            "http://pacs.local:8080/tenants/alpha/dicomweb",
            "/tenants/alpha",
        ),
    }
    for href, (dicomweb, basename) in cases.items():
        evaluated = _evaluate(script, href)
        source = _source(evaluated)
        assert source["qidoRoot"] == source["wadoRoot"] == source["wadoUriRoot"] == dicomweb, href
        assert evaluated["routerBasename"] == basename, href
    # What the issue asks of the data source, and the prefetcher that fetches every frame.
    source = _source(_evaluate(script, "http://pacs.local/"))
    assert source["supportsWildcard"] is source["supportsFuzzyMatching"] is True
    assert source["qidoSupportsIncludeField"] is source["enableStudyLazyLoad"] is True
    assert source["bulkDataURI"] == {"enabled": True, "relativeResolution": "studies"}
    assert source["dicomUploadEnabled"] is True  # OHIF's upload: STOW-RS
    assert _evaluate(script, "http://pacs.local/")["studyPrefetcher"]["enabled"] is True  # type: ignore[index]
    # Behind a proxy that rewrites hosts, PACSFLOW_PUBLIC_URL wins over the page's origin.
    behind = _source(_evaluate(config.served("https://pacs.example.org"), "http://10.0.0.5:8080/tenants/b/"))
    assert behind["qidoRoot"] == "https://pacs.example.org/tenants/b/dicomweb"


def _viewer_config(dicomweb: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "viewer-config", "--dicomweb", dicomweb],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **settings},
        check=False,
    )


def test_pacsflow_viewer_config_writes_a_fixed_configuration() -> None:
    result = _viewer_config("https://pacs.example.org/dicomweb/")
    assert result.returncode == 0, result.stderr
    evaluated = _evaluate(result.stdout, "https://viewer.hospital.example/")
    assert _source(evaluated)["qidoRoot"] == "https://pacs.example.org/dicomweb"
    assert evaluated["routerBasename"] == "/"
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline", "viewer-config", "--dicomweb", "pacs:8080/dicomweb"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode == 1
    assert "is not an absolute http(s) URL" in refused.stderr


def test_with_sign_in_ohif_gets_its_oidc_client_for_the_code_flow_with_pkce() -> None:
    expected = [
        {
            "authority": ISSUER,
            "client_id": "pacsflow-viewer",
            # Relative: OHIF puts the page's origin and router base in front, so each tenant's
            # viewer comes back to its own callback (<origin>/tenants/<t>/callback).
            "redirect_uri": "/callback",
            "post_logout_redirect_uri": "/",
            # "code" is what makes OHIF use oidc-client-ts, which always adds PKCE (S256).
            "response_type": "code",
            "scope": "openid profile dicomweb.read dicomweb.write",
            "revokeAccessTokenOnSignout": False,
        }
    ]
    script = config.served(None, SIGN_IN)
    for href, basename in (
        ("http://pacs.local:8080/", "/"),
        ("http://pacs.local:8080/tenants/alpha/viewer", "/tenants/alpha"),
    ):
        evaluated = _evaluate(script, href)
        assert evaluated["oidc"] == expected, href
        assert evaluated["routerBasename"] == basename
        assert _source(evaluated)["qidoRoot"] == f"http://pacs.local:8080{basename.rstrip('/')}/dicomweb"
    hosted = _evaluate(
        config.fixed("https://pacs.example.org/dicomweb", "/ohif", SIGN_IN),
        "https://viewer.example.org/ohif/",
    )
    assert hosted["oidc"] == expected
    assert hosted["routerBasename"] == "/ohif"


def test_without_sign_in_the_configuration_has_no_oidc_section() -> None:
    # OHIF reads any oidc value, even an empty list, as "sign in first".
    assert "oidc" not in _evaluate(config.served(None), "http://pacs.local/")
    assert "oidc" not in _evaluate(config.fixed("https://pacs.example.org/dicomweb"), "https://viewer.local/")
    assert config.served(None) == config.served(None, None)


def test_scopes_are_asked_for_once_each_after_openid_profile() -> None:
    sign_in = config.SignIn(ISSUER, "viewer", ("pacs:read", "openid", "pacs:read"))
    assert sign_in.oidc()[0]["scope"] == "openid profile pacs:read"


@pytest.mark.parametrize(
    ("issuer", "client_id", "scopes", "message"),
    [
        ("login.example.org", "viewer", ("read",), "is not an absolute http(s) URL"),
        ("", "viewer", ("read",), "PACSFLOW_OIDC_ISSUER"),
        (ISSUER, " ", ("read",), "the viewer's client id is empty: set PACSFLOW_OIDC_CLIENT_ID"),
        (ISSUER, "viewer", ("dicomweb read",), "a scope is one word without spaces"),
        (ISSUER, "viewer", ("",), "a scope is one word without spaces"),
    ],
)
def test_a_sign_in_that_cannot_work_is_refused_with_the_setting_to_fix(
    issuer: str, client_id: str, scopes: tuple[str, ...], message: str
) -> None:
    with pytest.raises(PacsflowError, match=re.escape(message)):
        config.SignIn(issuer, client_id, scopes)


def test_pacsflow_viewer_config_signs_in_when_auth_is_on() -> None:
    result = _viewer_config(
        "https://pacs.example.org/dicomweb", PACSFLOW_AUTH="jwt", PACSFLOW_OIDC_ISSUER=ISSUER
    )
    assert result.returncode == 0, result.stderr
    assert _evaluate(result.stdout, "https://viewer.example.org/")["oidc"][0]["authority"] == ISSUER  # type: ignore[index]
