"""``/analytics`` in a real browser against a running ``pacsflow dev``: studies sent by C-STORE to
two tenants, read a few times over DICOMweb, reach the analytics sink's Parquet files, and the page
draws them; the numbers it shows, in its charts and its tables, are those of what was sent.

Debian's chromium is driven by playwright-core (``tests/browser/analytics.mjs``). With
``ANALYTICS_SCREENSHOT=docs/analytics.png`` the README's picture of the page is written again."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from egress.viewer.release import CHARTS
from tests.support import dicomdata
from tests.support.browser import require_browser, run_script
from tests.support.dev import Dev, start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import free_port, require, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = "ANALYTICS_SCREENSHOT"
"""A path (relative to the repository) where the all-tenants page's screenshot is saved."""


@dataclass(frozen=True)
class Sent:
    tenant: str
    called: str  # the AE title storescu calls: it picks the tenant
    modality: str
    study: str
    series: str
    instances: int
    reads: int  # GETs of the study's metadata over DICOMweb

    @property
    def dicomweb(self) -> str:
        return "/dicomweb" if self.tenant == "default" else f"/tenants/{self.tenant}/dicomweb"


SENT = (
    Sent("default", "PACSFLOW", "CT", uid(881, 1), uid(881, 1, 1), 6, 3),
    Sent("default", "PACSFLOW", "MR", uid(881, 2), uid(881, 2, 1), 4, 2),
    Sent("alpha", "ALPHA", "CT", uid(881, 3), uid(881, 3, 1), 3, 1),
)


def _instances(tenant: str | None = None) -> dict[tuple[str, str], int]:
    """Instances sent, by tenant and modality."""
    counts: Counter[tuple[str, str]] = Counter()
    for s in SENT:
        if tenant in (None, s.tenant):
            counts[(s.tenant, s.modality)] += s.instances
    return dict(counts)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    require_dcmtk()
    require_browser()
    require(CHARTS.is_installed(CHARTS.installed_dir()), "Chart.js (make install)")
    tmp = tmp_path_factory.mktemp("analytics")
    running = start_dev(
        tmp / "var", tmp / "dev.log", free_port(), free_port(), {"PACSFLOW_SCP_TENANTS": "ALPHA=alpha"}
    )
    try:
        _send_and_read(running, tmp)
        yield running
    finally:
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGTERM)
            running.process.wait(timeout=60)


def _send_and_read(running: Dev, tmp: Path) -> None:
    base = f"http://127.0.0.1:{running.http_port}"
    for s in SENT:
        make = dicomdata.ct_series if s.modality == "CT" else dicomdata.mr_series
        files = dicomdata.write_all(make(s.study, s.series, s.instances), tmp / s.series)
        sent = storescu(running.scp_port, files, called=s.called)
        assert sent.returncode == 0, sent.stderr
    for s in SENT:
        search = f"{base}{s.dicomweb}/studies?StudyInstanceUID={s.study}"
        wait_for(
            lambda search=search, s=s: (
                [int(x["00201208"]["Value"][0]) for x in _get(search)] == [s.instances]
            ),
            60,
            f"study {s.study} to be indexed",
        )
        for _ in range(s.reads):
            assert len(_get(f"{base}{s.dicomweb}/studies/{s.study}/metadata")) == s.instances
    # What the page reads, once the sink has written it: instances by tenant and modality, and
    # the metadata reads by study.
    wait_for(
        lambda: (
            _by(_get(f"{base}/analytics/reports/daily_volume"), ("tenant_id", "modality"), "instances")
            == _instances()
        ),
        120,
        "the analytics tables to hold the instances sent",
    )
    wait_for(
        lambda: (
            _by(_get(f"{base}/analytics/reports/busiest_studies"), ("study_uid",), "requests")
            == {(s.study,): s.reads for s in SENT}
        ),
        120,
        "the analytics tables to hold the DICOMweb reads",
    )


def _by(answer: dict[str, Any], keys: tuple[str, ...], value: str) -> dict[tuple[Any, ...], float]:
    """A report's ``value`` column summed by ``keys``."""
    sums: defaultdict[tuple[Any, ...], float] = defaultdict(float)
    for row in answer["rows"]:
        record = dict(zip(answer["columns"], row, strict=True))
        sums[tuple(record[k] for k in keys)] += record[value]
    return dict(sums)


def _browse(url: str, run: str, screenshot: str | None = None) -> dict[str, Any]:
    job: dict[str, object] = {"url": url, "timeoutMs": 60_000}
    if screenshot:
        job["screenshot"] = str(ROOT / screenshot)
    report = run_script("analytics.mjs", run, job, timeout=180)
    assert report["consoleErrors"] == [], report["consoleErrors"]
    assert report["failedRequests"] == [], report["failedRequests"]
    assert report["charts"] is True and report["notice"] is None
    return report


def _cards(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cards = {card["name"]: card for card in report["cards"]}
    assert {c["state"] for c in cards.values()} == {"ready"}, [
        (c["name"], c["status"]) for c in cards.values()
    ]
    return cards


def _table(card: dict[str, Any], keys: tuple[str, ...], value: str) -> dict[tuple[str, ...], float]:
    """The card's table as the browser shows it: ``value`` (its text, ``1,234``) summed by ``keys``."""
    sums: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for cells in card["rows"]:
        record = dict(zip(card["columns"], cells, strict=True))
        sums[tuple(record[k] for k in keys)] += float(record[value].replace(",", ""))
    return dict(sums)


def _chart(card: dict[str, Any]) -> dict[tuple[str, str], float]:
    """The card's chart as Chart.js holds it: each (series, x label) and its value."""
    chart = card["chart"]
    assert chart is not None, f"{card['name']} has rows and no chart"
    values = [v for dataset in chart["datasets"] for v in dataset["data"] if v is not None]
    # On the canvas, in the series' colours: its bars (of non-zero values), or its line's points.
    if chart["type"] == "line" or any(values):
        assert card["canvas"]["dataPixels"] > 0, (card["name"], card["canvas"])
    return {
        (dataset["label"], label): value
        for dataset in chart["datasets"]
        for label, value in zip(chart["labels"], dataset["data"], strict=True)
        if value is not None
    }


def _charted_like_the_table(cards: dict[str, dict[str, Any]], page: str) -> None:
    """Every report with rows has its chart drawn, whose numbers add up to its table's y columns
    (the table shows two decimals at most); a report without rows says so and draws nothing."""
    for listed in _get(f"{page}/reports")["reports"]:
        card = cards[listed["name"]]
        if not card["rows"]:
            assert card["chart"] is None and card["status"].startswith("No rows yet"), card
            continue
        charted = sum(_chart(card).values())
        shown = sum(sum(_table(card, (), y).values()) for y in listed["y"])
        assert charted == pytest.approx(shown, abs=0.005 * len(card["rows"]) * len(listed["y"])), card["name"]


def test_the_page_draws_the_instances_and_reads_that_were_sent(dev: Dev) -> None:
    url = f"http://127.0.0.1:{dev.http_port}/analytics"
    report = _browse(url, "analytics", os.environ.get(SCREENSHOT))
    listed = _get(f"{url}/reports")["reports"]
    assert report["scope"].startswith(f"{len(listed)} reports, every tenant, as of ")
    cards = _cards(report)
    assert list(cards) == [r["name"] for r in listed]
    _charted_like_the_table(cards, url)

    # Instances by tenant and modality: the chart's series are "<tenant> · <modality>", stacked by day.
    volume = cards["daily_volume"]
    charted: defaultdict[tuple[str, str], float] = defaultdict(float)
    for (series, _day), value in _chart(volume).items():
        tenant, modality = series.split(" · ")
        charted[(tenant, modality)] += value
    assert dict(charted) == _instances()
    assert _table(volume, ("tenant_id", "modality"), "instances") == _instances()

    # Metadata reads by study, drawn per study; and the studies and instances each tenant stores.
    reads = {(s.study,): s.reads for s in SENT}
    assert {(label,): value for (_tenant, label), value in _chart(cards["busiest_studies"]).items()} == reads
    assert _table(cards["busiest_studies"], ("study_uid",), "requests") == reads
    storage = cards["storage_by_tenant"]
    assert set(storage["chart"]["labels"]) == {"default", "alpha"}
    assert _table(storage, ("tenant_id",), "instances") == {
        (t,): sum(n for (tenant, _), n in _instances().items() if tenant == t) for t in ("default", "alpha")
    }
    assert _table(storage, ("tenant_id",), "studies") == dict(Counter((s.tenant,) for s in SENT))
    assert sum(_table(cards["transfer_syntaxes"], (), "objects").values()) == sum(s.instances for s in SENT)

    if os.environ.get(SCREENSHOT):
        with Image.open(ROOT / os.environ[SCREENSHOT]) as image:
            assert image.size == (1280, 900)


def test_a_tenants_page_draws_that_tenants_data_alone(dev: Dev) -> None:
    url = f"http://127.0.0.1:{dev.http_port}/tenants/alpha/analytics"
    report = _browse(url, "analytics-tenant")
    assert ", tenant alpha, as of " in report["scope"]
    cards = _cards(report)
    _charted_like_the_table(cards, url)
    assert _table(cards["daily_volume"], ("tenant_id", "modality"), "instances") == _instances("alpha")
    assert cards["storage_by_tenant"]["chart"]["labels"] == ["alpha"]
    alpha = [s for s in SENT if s.tenant == "alpha"]
    assert _table(cards["busiest_studies"], ("study_uid",), "requests") == {
        (s.study,): s.reads for s in alpha
    }
