"""Each report's numbers over the written history, against numbers worked out here in Python from
the records written (never from DuckDB): what Doris would hold, then the report's arithmetic."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import msgspec
import pytest
import sqlglot

from analytics import reports
from analytics.layout import table
from pipeline.models import DorisTable
from tests.support.analytics_rows import DATETIME, Row, table_of
from tests.unit.analytics.conftest import History

Record = dict[str, Any]


def held(history: History, name: str) -> list[Record]:
    """The rows Doris holds of table ``name``: a Kafka record once; for a UNIQUE table, a key's
    last record, unless it deletes the key."""
    doris: DorisTable = table(name)
    once: dict[tuple[int, int], Row] = {}
    for row in history.rows:
        if table_of(row.record).name == name:
            once[row.partition, row.offset] = row
    records = [(position, msgspec.structs.asdict(row.record)) for position, row in sorted(once.items())]
    if doris.model == "DUPLICATE":
        return [r for _, r in records]
    last: dict[tuple[Any, ...], Record] = {}
    for _, record in records:  # in position order: a later one replaces an earlier one
        last[tuple(record[k] for k in doris.key)] = record
    return [r for r in last.values() if not r.get("deleted")]


def percentile(values: Iterable[float], p: float) -> float:
    """Linear interpolation between the closest ranks (Doris's PERCENTILE)."""
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_rows(found: list[list[Any]], expected: list[list[Any]]) -> None:
    assert len(found) == len(expected), (found, expected)
    for got, want in zip(found, expected, strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            if isinstance(b, float):
                assert a == pytest.approx(b), (got, want)
            else:
                assert a == b, (got, want)


def grouped(records: Iterable[Record], key: Callable[[Record], Any]) -> dict[Any, list[Record]]:
    groups: dict[Any, list[Record]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return groups


def test_every_report_is_doris_sql_with_a_header_naming_columns_of_its_answer(history: History) -> None:
    names = [r.name for r in reports.catalogue()]
    assert names == sorted(names) and len(names) == 7
    for report in reports.catalogue():
        parsed = sqlglot.parse(report.sql, read="doris")
        assert len(parsed) == 1 and isinstance(parsed[0], sqlglot.exp.Query), report.name
        assert report.title and report.description and report.chart in reports.CHARTS
        columns = reports.run(history.data_dir, report.name).columns
        assert report.x in columns and set(report.y) <= set(columns), (report.name, columns)


def test_studies_series_and_instances_per_day_by_tenant_and_modality(history: History) -> None:
    modality = {
        (s["tenant_id"], s["patient_id"], s["study_uid"], s["series_uid"]): s["modality"]
        for s in held(history, "dicom_state_meta")
    }

    def key(image: Record) -> tuple[str, str, str | None]:
        series = (image["tenant_id"], image["patient_id"], image["study_uid"], image["series_uid"])
        return image["created_time"][:10], image["tenant_id"], modality.get(series)

    groups = grouped(held(history, "dicom_image_meta"), key)
    expected = [
        [*k, len({i["study_uid"] for i in g}), len({i["series_uid"] for i in g}), len(g)]
        for k, g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or ""))
    ]
    answer = reports.run(history.data_dir, "daily_volume")
    assert answer.columns == ["day", "tenant_id", "modality", "studies", "series", "instances"]
    assert_rows(answer.rows, expected)
    # What the history holds, said plainly: 5 CT (one deleted, one re-sent), 3 MR, 4 alpha CT.
    assert sum(r[-1] for r in answer.rows) == 4 + 3 + 4


def test_storage_per_tenant(history: History) -> None:
    groups = grouped(held(history, "dicom_image_meta"), lambda i: i["tenant_id"])
    expected = sorted(
        (
            [
                tenant,
                len({i["study_uid"] for i in g}),
                len({i["series_uid"] for i in g}),
                len(g),
                sum(i["space_size"] for i in g),
            ]
            for tenant, g in groups.items()
        ),
        key=lambda r: (-r[4], r[0]),
    )
    answer = reports.run(history.data_dir, "storage_by_tenant")
    assert answer.columns == ["tenant_id", "studies", "series", "instances", "bytes"]
    assert_rows(answer.rows, expected)


def test_ingest_latency_pairs_each_instance_with_its_last_receipt(history: History) -> None:
    objects = grouped(
        held(history, "dicom_object_meta"),
        lambda o: (o["tenant_id"], o["study_uid"], o["series_uid"], o["sop_uid"]),
    )
    by_hour: dict[str, list[int]] = defaultdict(list)
    for image in held(history, "dicom_image_meta"):
        indexed = when(image["created_time"])
        receipts = objects[image["tenant_id"], image["study_uid"], image["series_uid"], image["sop_uid"]]
        received = max(when(o["created_time"]) for o in receipts if when(o["created_time"]) <= indexed)
        hour = received.replace(minute=0, second=0).strftime(DATETIME)
        by_hour[hour].append(int((indexed - received).total_seconds()))
    expected = [
        [hour, len(v), percentile(v, 0.5), percentile(v, 0.95), percentile(v, 0.99), max(v)]
        for hour, v in sorted(by_hour.items())
    ]
    answer = reports.run(history.data_dir, "ingest_latency")
    assert answer.columns == ["hour", "instances", "p50_s", "p95_s", "p99_s", "max_s"]
    assert_rows(answer.rows, expected)
    # The re-sent CT instance counts once, in the hour it was re-sent, 1 s after that receipt.
    assert [r[1] for r in answer.rows] == [3, 3, 1, 4]


def test_busiest_studies_with_error_rates(history: History) -> None:
    requests = [r for r in held(history, "wado_access_log") if r["study_uid"] is not None]
    groups = grouped(requests, lambda r: (r["tenant_id"], r["study_uid"]))
    expected = sorted(
        (
            [
                *k,
                len(g),
                sum(r["status"] >= 400 for r in g),
                sum(r["status"] >= 400 for r in g) / len(g),
                sum(r["bytes"] for r in g),
                sum(r["duration_ms"] for r in g) / len(g),
            ]
            for k, g in groups.items()
        ),
        key=lambda r: (-r[2], r[0], r[1]),
    )[:20]
    answer = reports.run(history.data_dir, "busiest_studies")
    assert answer.columns == [
        "tenant_id",
        "study_uid",
        "requests",
        "errors",
        "error_rate",
        "bytes",
        "mean_ms",
    ]
    assert_rows(answer.rows, expected)


def test_busiest_routes_with_error_rates_and_answer_times(history: History) -> None:
    groups = grouped(held(history, "wado_access_log"), lambda r: r["route"])
    expected = sorted(
        (
            [
                route,
                len(g),
                sum(r["status"] >= 400 for r in g),
                sum(r["status"] >= 400 for r in g) / len(g),
                sum(r["status"] >= 500 for r in g) / len(g),
                sum(r["bytes"] for r in g),
                sum(r["duration_ms"] for r in g) / len(g),
                percentile((r["duration_ms"] for r in g), 0.95),
            ]
            for route, g in groups.items()
        ),
        key=lambda r: (-r[1], r[0]),
    )[:20]
    answer = reports.run(history.data_dir, "busiest_routes")
    assert answer.columns == [
        "route", "requests", "errors", "error_rate", "server_error_rate", "bytes", "mean_ms", "p95_ms"
    ]  # fmt: skip
    assert_rows(answer.rows, expected)


def test_transfer_syntaxes_received_count_every_store(history: History) -> None:
    groups = grouped(held(history, "dicom_object_meta"), lambda o: o["transfer_syntax_uid"])
    expected = sorted(
        (
            [
                syntax,
                len(g),
                len({(o["tenant_id"], o["sop_uid"]) for o in g}),
                sum(o["file_size"] for o in g),
                # DATETIME(3) text, as DuckDB's timestamps print: no fraction when it is zero.
                str(min(datetime.fromisoformat(o["created_time"]) for o in g)),
                str(max(datetime.fromisoformat(o["created_time"]) for o in g)),
            ]
            for syntax, g in groups.items()
        ),
        key=lambda r: (-r[1], r[0]),
    )
    answer = reports.run(history.data_dir, "transfer_syntaxes")
    assert answer.columns == [
        "transfer_syntax_uid",
        "objects",
        "instances",
        "bytes",
        "first_received",
        "last_received",
    ]
    assert_rows(answer.rows, expected)
    assert [r[1] for r in answer.rows] == [6, 5, 4]  # the re-sent CT instance twice


def test_conversion_failures_by_syntax(history: History) -> None:
    groups = grouped(held(history, "conversion_record"), lambda c: (c["source_ts"], c["target_ts"]))

    def count(g: list[Record], status: str) -> int:
        return sum(c["status"] == status for c in g)

    expected = sorted(
        (
            [
                *k,
                len(g),
                count(g, "converted"),
                count(g, "failed"),
                count(g, "skipped"),
                count(g, "failed") / len(g),
                min((c["reason"] for c in g if c["status"] == "failed"), default=None),
            ]
            for k, g in groups.items()
        ),
        key=lambda r: (-r[4], r[0], r[1]),
    )
    answer = reports.run(history.data_dir, "conversion_failures")
    assert answer.columns == [
        "source_ts", "target_ts", "attempts", "converted", "failed", "skipped", "failure_rate", "a_reason"
    ]  # fmt: skip
    assert_rows(answer.rows, expected)
    assert [r[4] for r in answer.rows] == [4, 0]


def test_a_report_for_one_tenant_holds_that_tenants_rows_only(history: History) -> None:
    answer = reports.run(history.data_dir, "storage_by_tenant", tenant="alpha")
    alpha = [i for i in held(history, "dicom_image_meta") if i["tenant_id"] == "alpha"]
    assert answer.rows == [["alpha", 1, 1, len(alpha), sum(i["space_size"] for i in alpha)]]
    routes = reports.run(history.data_dir, "busiest_routes", tenant="alpha")
    assert {r[0] for r in routes.rows} == {
        r["route"] for r in held(history, "wado_access_log") if r["tenant_id"] == "alpha"
    }
