"""``/analytics``: the analytics reports as charts and tables, for every tenant or for one.

``/analytics`` covers every tenant; ``/tenants/<t>/analytics`` the tenant ``<t>`` alone. Under
each: the page (``egress/analytics_page``, plain files), ``reports`` (JSON: the catalogue),
``reports/<name>`` (JSON: one report's columns and rows) and ``assets/<file>`` (the page's script
and style, and Chart.js where ``make install`` put it). The page names everything by relative
addresses, so one page serves every tenant, behind any proxy prefix.

Reports are DuckDB queries over the sink's Parquet files (``analytics.reports``), run in a thread:
a report takes as long as its files take to read, and the event loop keeps answering DICOMweb
meanwhile. Before the sink has written anything, every report has columns and no rows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import hdrs, web

from egress.viewer.release import CHARTS
from egress.wado.errors import NotFound
from egress.wado.keys import SETTINGS
from egress.wado.urls import tenant_of
from pipeline import log
from pipeline.errors import PacsflowError

if TYPE_CHECKING:
    from analytics.output import Result
    from analytics.reports import Report

_log = log.get(__name__)

PREFIXES = ("", "/tenants/{tenant}")
"""Every tenant's reports, and one tenant's."""
PAGE_DIR = Path(__file__).resolve().parents[1] / "analytics_page"
_CHARTS_MARK = "<!-- chart library -->"
_CHARTS_TAG = f'<script src="analytics/assets/{CHARTS.entry}"></script>'
_REVALIDATE = "no-cache"


# ``analytics.reports`` is imported on the first report asked for, in the thread that runs it:
# DuckDB, Arrow and sqlglot would otherwise add tens of MB to every web process, most never asked.


def _catalogue() -> list[Report]:
    from analytics.reports import catalogue

    return catalogue()


def _run(data_dir: Path, name: str, tenant: str | None) -> Result:
    from analytics.reports import run

    return run(data_dir, name, tenant)


class _Analytics:
    """The page, its files, and the reports' JSON."""

    def __init__(self, charts_dir: Path) -> None:
        self.charts = CHARTS.is_installed(charts_dir)
        # Reports run in the default executor, which also reads files for WADO-RS: one at a time,
        # so that a page asking for all of them (or anyone calling the endpoint) never fills it.
        self._running = asyncio.Semaphore(1)
        self.assets = {name: PAGE_DIR / name for name in ("analytics.js", "analytics.css")}
        if self.charts:
            self.assets[CHARTS.entry] = charts_dir / CHARTS.entry
            _log.info("analytics_charts_served", folder=str(charts_dir), version=CHARTS.version)
        else:
            _log.warning("analytics_charts_not_installed", expected=str(charts_dir), fix="run make install")
        template = (PAGE_DIR / "index.html").read_text()
        if _CHARTS_MARK not in template:
            raise RuntimeError(f"{PAGE_DIR / 'index.html'} lost its {_CHARTS_MARK!r} line")
        self.page = template.replace(_CHARTS_MARK, _CHARTS_TAG if self.charts else "").encode()

    async def show(self, request: web.Request) -> web.StreamResponse:
        _scope(request)  # a malformed tenant is a 400, not a page that fails on every report
        return web.Response(
            body=self.page,
            content_type="text/html",
            charset="utf-8",
            headers={hdrs.CACHE_CONTROL: _REVALIDATE},
        )

    async def to_page(self, request: web.Request) -> web.StreamResponse:
        # Relative, so that it holds behind a proxy's prefix too: the page's own addresses are
        # relative to ``.../analytics``, not ``.../analytics/``.
        raise web.HTTPFound("../analytics")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        file = self.assets.get(name)
        if file is None:
            hint = "; install Chart.js with `make install`" if name == CHARTS.entry else ""
            raise NotFound(f"{request.path}: the analytics page has no such file{hint}")
        return web.FileResponse(file, headers={hdrs.CACHE_CONTROL: _REVALIDATE})

    async def catalogue(self, request: web.Request) -> web.StreamResponse:
        tenant = _scope(request)
        listed = [
            {
                "name": r.name,
                "title": r.title,
                "description": r.description,
                "chart": r.chart,
                "x": r.x,
                "y": r.y,
            }
            for r in await asyncio.to_thread(_catalogue)
        ]
        return _json({"tenant": tenant, "charts": self.charts, "reports": listed})

    async def report(self, request: web.Request) -> web.StreamResponse:
        tenant = _scope(request)
        name = request.match_info["name"]
        known = [r.name for r in await asyncio.to_thread(_catalogue)]
        if name not in known:
            raise NotFound(
                f"no report {name!r}: the reports are {', '.join(known)} (listed at .../analytics/reports)"
            )
        data_dir = request.app[SETTINGS].data_dir
        try:
            async with self._running:
                result = await asyncio.to_thread(_run, data_dir, name, tenant)
        except PacsflowError as exc:  # DuckDB's message quotes the SQL: the log has it, not the answer
            _log.error("analytics_report_failed", report=name, tenant=tenant, error=str(exc))
            raise web.HTTPInternalServerError(
                text=f"report {name} failed; the server log has the details (analytics_report_failed)"
            ) from None
        return _json({"name": name, "tenant": tenant, "columns": result.columns, "rows": result.rows})


def _scope(request: web.Request) -> str | None:
    """The tenant of ``/tenants/<t>/analytics...``; ``None`` (every tenant) for ``/analytics``."""
    if "tenant" not in request.match_info:
        return None
    return str(tenant_of(request, request.app[SETTINGS]))


def _json(body: object) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={hdrs.CACHE_CONTROL: _REVALIDATE},
    )


def add_routes(app: web.Application, charts_dir: Path | None = None) -> None:
    """The analytics routes; before the viewer's, which answer every path nothing else does.

    ``charts_dir`` is where Chart.js is looked for (default: where ``make install`` puts it)."""
    analytics = _Analytics(charts_dir or CHARTS.installed_dir())
    for prefix in PREFIXES:
        app.router.add_get(f"{prefix}/analytics", analytics.show)
        app.router.add_get(f"{prefix}/analytics/", analytics.to_page)
        app.router.add_get(f"{prefix}/analytics/reports", analytics.catalogue)
        app.router.add_get(f"{prefix}/analytics/reports/{{name}}", analytics.report)
        app.router.add_get(f"{prefix}/analytics/assets/{{file}}", analytics.asset)
