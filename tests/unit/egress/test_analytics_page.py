"""``/analytics`` over real HTTP on the real application, with Parquet files written as the sink
writes them (``tests.support.analytics_rows``), and Chart.js's install by ``python -m
egress.viewer.install``.

The page in a real browser, on a running ``pacsflow dev``, is tests/e2e/test_analytics_page.py."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from pydicom.uid import CTImageStorage, MRImageStorage

from analytics import layout, reports
from egress.viewer import install
from egress.viewer.release import CHARTS, COMPLETE
from egress.wado import analytics
from egress.wado.app import create_app
from egress.wado.errors import errors
from egress.wado.keys import SETTINGS
from pipeline import settings as settings_module
from pipeline.indexing import state_record
from pipeline.settings import Settings
from tests.support import dicomdata
from tests.support.analytics_rows import Rows, stored_and_indexed
from tests.support.dicomdata import uid
from tests.support.services import free_port

Check = Callable[[ClientSession, str], Awaitable[None]]
RECEIVED = datetime(2026, 1, 15, 10, 0, 0, tzinfo=UTC)
INDEXED = RECEIVED + timedelta(seconds=2)


@dataclass(frozen=True)
class Series:
    tenant: str
    study: str
    uid: str
    modality: str
    instances: int


# Two tenants; alpha has two modalities, beta one.
SENT = (
    Series("alpha", uid(9, 1), uid(9, 1, 1), "CT", 3),
    Series("alpha", uid(9, 1), uid(9, 1, 2), "MR", 2),
    Series("beta", uid(9, 2), uid(9, 2, 1), "CT", 4),
)


def _sink_wrote(data_dir: Path) -> Counter[str]:
    """The sink's files after ``SENT`` was stored and indexed; the bytes each tenant stores."""
    rows = Rows()
    stored: Counter[str] = Counter()
    for s in SENT:
        sop_class = CTImageStorage if s.modality == "CT" else MRImageStorage
        spec = dicomdata.SeriesSpec(s.study, s.uid, f"P-{s.tenant}", s.modality, s.instances)
        indexed = None
        for ds in dicomdata.series(spec, sop_class):
            log, indexed = stored_and_indexed(ds, s.tenant, RECEIVED, INDEXED)
            rows.add(log)
            rows.add(indexed.image)
            stored[s.tenant] += indexed.image.space_size
        assert indexed is not None
        rows.add(state_record(indexed.series, s.instances, INDEXED))
    rows.write(data_dir)
    return stored


def _settings(tmp_path: Path) -> Settings:
    # Kafka on a port nobody listens on: the application's publishers retry in the background.
    return settings_module.load(
        {"PACSFLOW_DATA_DIR": str(tmp_path / "var"), "PACSFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    )


def _serve(app: web.Application, check: Check) -> None:
    async def main() -> None:
        async with TestServer(app) as server, ClientSession() as client:
            await check(client, str(server.make_url("")).rstrip("/"))

    asyncio.run(main())


def _serve_real(settings: Settings, check: Check) -> None:
    _serve(create_app(settings), check)


async def _get(client: ClientSession, url: str) -> Any:
    async with client.get(url) as response:
        assert response.status == 200, (url, await response.text())
        assert response.content_type == "application/json"
        return await response.json()


def _by(answer: dict[str, Any], keys: tuple[str, ...], value: str) -> dict[tuple[Any, ...], Any]:
    columns = answer["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in answer["rows"]]
    return {tuple(row[k] for k in keys): row[value] for row in rows}


def test_reports_serve_the_sinks_rows_for_every_tenant_and_for_one(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stored = _sink_wrote(settings.data_dir)
    instances: Counter[tuple[str, str]] = Counter()
    for s in SENT:
        instances[(s.tenant, s.modality)] += s.instances

    async def check(client: ClientSession, base: str) -> None:
        listed = await _get(client, f"{base}/analytics/reports")
        assert listed["tenant"] is None
        assert [r["name"] for r in listed["reports"]] == [r.name for r in reports.catalogue()]
        assert {r["chart"] for r in listed["reports"]} <= {"bar", "line", "table"}
        volume = await _get(client, f"{base}/analytics/reports/daily_volume")
        assert _by(volume, ("tenant_id", "modality"), "instances") == dict(instances)
        storage = await _get(client, f"{base}/analytics/reports/storage_by_tenant")
        assert _by(storage, ("tenant_id",), "bytes") == {(t,): b for t, b in stored.items()}

        # A tenant's path: that tenant's rows alone.
        assert (await _get(client, f"{base}/tenants/alpha/analytics/reports"))["tenant"] == "alpha"
        volume = await _get(client, f"{base}/tenants/alpha/analytics/reports/daily_volume")
        assert volume["tenant"] == "alpha"
        assert _by(volume, ("tenant_id", "modality"), "instances") == {
            key: n for key, n in instances.items() if key[0] == "alpha"
        }
        storage = await _get(client, f"{base}/tenants/beta/analytics/reports/storage_by_tenant")
        assert _by(storage, ("tenant_id",), "bytes") == {("beta",): stored["beta"]}

        # Every report, as `pacsflow report` runs it, whole and for one tenant.
        for report in reports.catalogue():
            for prefix, tenant in (("", None), ("/tenants/beta", "beta")):
                answer = await _get(client, f"{base}{prefix}/analytics/reports/{report.name}")
                expected = reports.run(settings.data_dir, report.name, tenant)
                assert (answer["columns"], answer["rows"]) == (expected.columns, expected.rows), report.name

    _serve_real(settings, check)


def test_before_the_sink_has_written_every_report_has_columns_and_no_rows(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert not layout.root(settings.data_dir).exists()

    async def check(client: ClientSession, base: str) -> None:
        for report in reports.catalogue():
            answer = await _get(client, f"{base}/analytics/reports/{report.name}")
            assert answer["rows"] == [], report.name
            assert report.x in answer["columns"] and set(report.y) <= set(answer["columns"]), report.name

    _serve_real(settings, check)


def test_an_unknown_report_or_tenant_is_an_error_that_says_why(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        names = ", ".join(r.name for r in reports.catalogue())
        for path in ("/analytics/reports/nope", "/tenants/alpha/analytics/reports/nope"):
            async with client.get(base + path) as response:
                assert response.status == 404, path
                assert (await response.json())["error"] == (
                    f"no report 'nope': the reports are {names} (listed at .../analytics/reports)"
                )
        async with client.get(base + "/tenants/a%20b/analytics/reports/daily_volume") as response:
            assert response.status == 400
            assert "tenant is not valid: 'a b'" in (await response.json())["error"]

    _serve_real(_settings(tmp_path), check)


def _fake_charts(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / CHARTS.entry).write_text("window.Chart = function Chart() {};" * 100)
    (folder / COMPLETE).write_text("fake")
    return folder


def test_the_page_and_its_files_for_every_tenant_and_for_one(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    charts = _fake_charts(tmp_path / "charts")
    app = web.Application(middlewares=[errors])
    app[SETTINGS] = settings
    analytics.add_routes(app, charts)
    page = (analytics.PAGE_DIR / "index.html").read_text()

    async def check(client: ClientSession, base: str) -> None:
        for prefix in ("", "/tenants/alpha"):
            async with client.get(f"{base}{prefix}/analytics") as response:
                assert response.status == 200
                assert response.content_type == "text/html"
                html = await response.text()
            # Every address in the page is relative: the same page serves every tenant.
            assert '<script src="analytics/assets/chart.umd.js"></script>' in html
            assert html == page.replace(
                "<!-- chart library -->", f'<script src="analytics/assets/{CHARTS.entry}"></script>'
            )
            for name, source in (
                ("analytics.js", analytics.PAGE_DIR / "analytics.js"),
                ("analytics.css", analytics.PAGE_DIR / "analytics.css"),
                (CHARTS.entry, charts / CHARTS.entry),
            ):
                async with client.get(f"{base}{prefix}/analytics/assets/{name}") as response:
                    assert response.status == 200, name
                    assert response.headers["Cache-Control"] == "no-cache"
                    assert await response.text() == source.read_text()
            async with client.get(f"{base}{prefix}/analytics/", allow_redirects=False) as response:
                assert response.status == 302
                assert response.headers["Location"] == "../analytics"
        async with client.get(f"{base}/analytics/assets/..%2Fanalytics.py") as response:
            assert response.status == 404

    _serve(app, check)


def test_without_chart_js_the_page_has_tables_and_the_script_is_a_404_naming_the_fix(tmp_path: Path) -> None:
    app = web.Application(middlewares=[errors])
    app[SETTINGS] = _settings(tmp_path)
    analytics.add_routes(app, tmp_path / "not-installed")

    async def check(client: ClientSession, base: str) -> None:
        async with client.get(f"{base}/analytics") as response:
            assert response.status == 200
            html = await response.text()
        assert "<script" in html and CHARTS.entry not in html  # analytics.js only
        assert (await _get(client, f"{base}/analytics/reports"))["charts"] is False
        async with client.get(f"{base}/analytics/assets/{CHARTS.entry}") as response:
            assert response.status == 404
            assert "install Chart.js with `make install`" in (await response.json())["error"]

    _serve(app, check)


def test_the_real_app_serves_the_page_not_the_viewer_at_analytics(tmp_path: Path) -> None:
    async def check(client: ClientSession, base: str) -> None:
        for path in ("/analytics", "/tenants/alpha/analytics"):
            async with client.get(base + path, headers={"Accept": "text/html"}) as response:
                assert response.status == 200, path
                assert "<title>pacsflow analytics</title>" in await response.text()

    _serve_real(_settings(tmp_path), check)


# Chart.js's install: the same installer as OHIF's, on tarballs made here. The real release is what
# `make install` fetches and tests/e2e/test_analytics_page.py draws with.


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_only_chart_js_umd_build_is_unpacked_and_it_gets_a_gzip_twin(tmp_path: Path) -> None:
    script = b"window.Chart = function Chart() {};" * 200
    tarball = _tarball(
        tmp_path / "chart.js.tgz",
        {
            "package/package.json": b"{}",
            f"package/dist/{CHARTS.entry}": script,
            "package/dist/chart.js": b"export {};",
            f"package/dist/{CHARTS.entry}.map": b"{}",
        },
    )
    into = tmp_path / "dist"
    install.unpack(tarball, into, CHARTS)
    assert [p.name for p in into.iterdir()] == [CHARTS.entry]
    assert install.precompress(into) == 1
    with pytest.raises(
        install.InstallError, match=r"has no package/dist/chart\.umd\.js: not a prebuilt Chart\.js"
    ):
        install.unpack(
            _tarball(tmp_path / "empty.tgz", {"package/dist/chart.js": b""}), tmp_path / "d2", CHARTS
        )


def test_a_tarball_that_is_not_the_pinned_chart_js_is_refused(tmp_path: Path) -> None:
    fake = _tarball(tmp_path / "chart.js.tgz", {f"package/dist/{CHARTS.entry}": b"window.Chart = 1;"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "egress.viewer.install",
            "--only",
            CHARTS.key,
            "--tarball",
            str(fake),
            "--target",
            str(tmp_path / "charts"),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        f"chartjs: not installed: chart.js.tgz is not the pinned chart.js@{CHARTS.version}" in result.stderr
    )
    assert not (tmp_path / "charts").exists()
