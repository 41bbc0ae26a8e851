"""OHIF's ``app-config.js``: one DICOMweb data source, pacsflow's own.

Served by pacsflow, the script finds its DICOMweb from the page's own address: ``/`` is the
default tenant's ``/dicomweb`` and ``/tenants/<t>/`` that tenant's, so one file serves every
tenant. Written for a viewer hosted elsewhere (``pacsflow viewer-config``), the DICOMweb URL is
fixed.
"""

from __future__ import annotations

import orjson

from pipeline import __version__
from pipeline.errors import PacsflowError

DATA_SOURCE = "pacsflow"


def _config() -> dict[str, object]:
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


def served(public_base: str | None) -> str:
    """The script pacsflow serves: DICOMweb and the router's base follow the page's tenant.

    ``public_base`` (``PACSFLOW_PUBLIC_URL``) replaces the page's origin when pacsflow sits behind
    a proxy that rewrites hosts; None keeps the origin the browser used."""
    origin = orjson.dumps(public_base).decode() if public_base else "window.location.origin"
    return (
        _HEADER
        + "(function () {\n"
        + "  var tenant = /^\\/tenants\\/([^/]+)/.exec(window.location.pathname);\n"
        + "  var base = tenant ? '/tenants/' + tenant[1] : '';\n"
        + f"  var dicomweb = {origin} + base + '/dicomweb';\n"
        + f"  var config = {orjson.dumps(_config(), option=orjson.OPT_INDENT_2).decode()};\n"
        + "  var source = config.dataSources[0].configuration;\n"
        + "  source.qidoRoot = source.wadoRoot = source.wadoUriRoot = dicomweb;\n"
        + "  config.routerBasename = base || '/';\n"
        + "  window.config = config;\n"
        + "})();\n"
    )


def fixed(dicomweb_url: str, router_basename: str = "/") -> str:
    """The script for an OHIF hosted elsewhere, aimed at one pacsflow DICOMweb URL."""
    if not dicomweb_url.startswith(("http://", "https://")):
        raise PacsflowError(
            f"{dicomweb_url!r} is not an absolute http(s) URL: give pacsflow's DICOMweb as the "
            "browser reaches it, e.g. https://pacs.example.org/dicomweb"
        )
    config = _config()
    config["routerBasename"] = router_basename
    source = config["dataSources"][0]["configuration"]  # type: ignore[index]
    source["qidoRoot"] = source["wadoRoot"] = source["wadoUriRoot"] = dicomweb_url.rstrip("/")
    return _HEADER + f"window.config = {orjson.dumps(config, option=orjson.OPT_INDENT_2).decode()};\n"
