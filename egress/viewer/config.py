"""OHIF's ``app-config.js``: one DICOMweb data source, pacsflow's own.

Served by pacsflow, the script finds its DICOMweb from the page's own address: ``/`` is the
default tenant's ``/dicomweb`` and ``/tenants/<t>/`` that tenant's, so one file serves every
tenant. Written for a viewer hosted elsewhere (``pacsflow viewer-config``), the DICOMweb URL is
fixed.

With a ``SignIn``, OHIF signs its user in at the OpenID Connect issuer before it shows anything and
sends the access token on every DICOMweb request. OHIF makes the relative redirect URIs absolute
with the page's origin and router base: ``<origin>/callback`` for the default tenant,
``<origin>/tenants/<t>/callback`` for a tenant; each must be registered at the issuer.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from pipeline import __version__
from pipeline.errors import PacsflowError

DATA_SOURCE = "pacsflow"
CALLBACK = "/callback"
"""OHIF's route that finishes a sign-in, under its router base."""


@dataclass(frozen=True)
class SignIn:
    """The viewer as a public client of an OpenID Connect issuer."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    """Asked for beyond ``openid profile``: those granting the viewer's rights (read, write)."""

    def __post_init__(self) -> None:
        if not self.issuer.startswith(("http://", "https://")):
            raise PacsflowError(
                f"the OpenID Connect issuer {self.issuer!r} is not an absolute http(s) URL "
                "(PACSFLOW_OIDC_ISSUER, e.g. https://login.example.org/realms/pacs)"
            )
        if not self.client_id.strip():
            raise PacsflowError("the viewer's client id is empty: set PACSFLOW_OIDC_CLIENT_ID")
        bad = [scope for scope in self.scopes if not scope or any(c.isspace() for c in scope)]
        if bad:
            raise PacsflowError(f"{bad!r}: a scope is one word without spaces (PACSFLOW_AUTH_SCOPES)")

    def oidc(self) -> list[dict[str, object]]:
        """OHIF's ``oidc`` setting; it reads the first entry only."""
        return [
            {
                "authority": self.issuer,
                "client_id": self.client_id,
                # OHIF prefixes both with the page's origin and router base.
                "redirect_uri": CALLBACK,
                "post_logout_redirect_uri": "/",
                # "code" picks OHIF's oidc-client-ts UserManager: the code flow with PKCE (S256);
                # OHIF's older client would do the implicit flow, tokens in the address.
                "response_type": "code",
                "scope": " ".join(dict.fromkeys(["openid", "profile", *self.scopes])),
                # Revocation needs the issuer's revocation_endpoint, which some issuers lack: sign-out
                # would fail there. Ending the session at the issuer ends its refresh tokens, and
                # pacsflow judges an access token by its signature, which revocation does not change.
                "revokeAccessTokenOnSignout": False,
            }
        ]


def _config(sign_in: SignIn | None) -> dict[str, object]:
    config = _common()
    if sign_in is not None:
        config["oidc"] = sign_in.oidc()
    return config


def _common() -> dict[str, object]:
    return {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        # Every image of the series on screen is fetched before it is scrolled to: scrolling a
        # stack never waits on the network.
        "studyPrefetcher": {
            "enabled": True,
            "displaySetsCount": 1,
            "maxNumPrefetchRequests": 10,
            "order": "closest",
        },
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": DATA_SOURCE,
                "configuration": {
                    "friendlyName": "pacsflow",
                    "name": DATA_SOURCE,
                    "qidoRoot": "",
                    "wadoRoot": "",
                    "wadoUriRoot": "",
                    "qidoSupportsIncludeField": True,
                    "supportsReject": False,
                    # OHIF's upload posts to STOW-RS at wadoRoot/studies.
                    "dicomUploadEnabled": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


_HEADER = f"// OHIF configuration written by pacsflow {__version__}; see its README, 'Viewer'.\n"


def served(public_base: str | None, sign_in: SignIn | None = None) -> str:
    """The script pacsflow serves: DICOMweb and the router's base follow the page's tenant.

    ``public_base`` (``PACSFLOW_PUBLIC_URL``) replaces the page's origin when pacsflow sits behind
    a proxy that rewrites hosts; None keeps the origin the browser used. ``sign_in``: OHIF signs
    its user in first (``PACSFLOW_AUTH=jwt``)."""
    origin = orjson.dumps(public_base).decode() if public_base else "window.location.origin"
    return (
        _HEADER
        + "(function () {\n"
        + "  var tenant = /^\\/tenants\\/([^/]+)/.exec(window.location.pathname);\n"
        + "  var base = tenant ? '/tenants/' + tenant[1] : '';\n"
        + f"  var dicomweb = {origin} + base + '/dicomweb';\n"
        + f"  var config = {orjson.dumps(_config(sign_in), option=orjson.OPT_INDENT_2).decode()};\n"
        + "  var source = config.dataSources[0].configuration;\n"
        + "  source.qidoRoot = source.wadoRoot = source.wadoUriRoot = dicomweb;\n"
        + "  config.routerBasename = base || '/';\n"
        + "  window.config = config;\n"
        + "})();\n"
    )


def fixed(dicomweb_url: str, router_basename: str = "/", sign_in: SignIn | None = None) -> str:
    """The script for an OHIF hosted elsewhere, aimed at one pacsflow DICOMweb URL; with
    ``sign_in``, its users sign in at the issuer whose tokens pacsflow accepts."""
    if not dicomweb_url.startswith(("http://", "https://")):
        raise PacsflowError(
            f"{dicomweb_url!r} is not an absolute http(s) URL: give pacsflow's DICOMweb as the "
            "browser reaches it, e.g. https://pacs.example.org/dicomweb"
        )
    config = _config(sign_in)
    config["routerBasename"] = router_basename
    source = config["dataSources"][0]["configuration"]  # type: ignore[index]
    source["qidoRoot"] = source["wadoRoot"] = source["wadoUriRoot"] = dicomweb_url.rstrip("/")
    return _HEADER + f"window.config = {orjson.dumps(config, option=orjson.OPT_INDENT_2).decode()};\n"
