"""`pacsflow sql` and `pacsflow report` over real DuckDB and real Parquet files."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest

from analytics import layout, query, reports
from analytics.output import Result, render
from pipeline import settings
from pipeline.errors import PacsflowError
from pipeline.models import DORIS_TABLES
from tests.unit.analytics.conftest import History
from tests.unit.analytics.test_reports import held


def test_every_table_is_a_view_with_its_columns_and_no_rows_before_any_file(tmp_path: Path) -> None:
    with query.connect(tmp_path) as con:
        for table in DORIS_TABLES:
            described = con.execute(f"DESCRIBE {table.name}").fetchall()
            assert [d[0] for d in described] == [c.name for c in table.columns]
            assert con.execute(f"SELECT count(*) FROM {table.name}").fetchone() == (0,)  # noqa: S608
    for report in reports.catalogue():
        assert reports.run(tmp_path, report.name).rows == [], report.name


def test_views_hold_what_doris_holds_and_one_tenant_on_demand(history: History) -> None:
    for table in DORIS_TABLES:
        found = query.execute(history.data_dir, f"SELECT count(*) FROM {table.name}").rows  # noqa: S608
        assert found == [[len(held(history, table.name))]], table.name
    for tenant in ("default", "alpha"):
        found = query.execute(
            history.data_dir, "SELECT DISTINCT tenant_id FROM dicom_object_meta", tenant
        ).rows
        assert found == [[tenant]]
        count = query.execute(history.data_dir, "SELECT count(*) FROM dicom_image_meta", tenant).rows
        assert count == [[len([i for i in held(history, "dicom_image_meta") if i["tenant_id"] == tenant])]]


def test_a_bad_tenant_is_refused_before_it_reaches_the_sql(tmp_path: Path) -> None:
    with pytest.raises(PacsflowError, match="tenant is not valid"):
        query.connect(tmp_path, "x' OR '1'='1")


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO '{root}/x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; SELECT 2",
        "ATTACH '{root}/x.duckdb'",
        "SET enable_external_access = true",
    ],
)
def test_only_a_single_read_is_run(history: History, statement: str) -> None:
    root = layout.root(history.data_dir)
    before = sorted(root.rglob("*"))
    with pytest.raises(query.QueryError, match="only a single SELECT"):
        query.execute(history.data_dir, statement.format(root=root))
    assert sorted(root.rglob("*")) == before


@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{root}/dicom_image_meta/bases.json' (FORMAT csv)",
        "explain analyse COPY (SELECT 1 AS y) TO '{root}/dicom_image_meta' (FORMAT parquet, OVERWRITE true)",
        "EXPLAIN DELETE FROM dicom_image_meta",
    ],
)
def test_explain_runs_only_for_a_select(history: History, statement: str) -> None:
    root = layout.root(history.data_dir)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(query.QueryError, match=r"EXPLAIN \[ANALYZE\] is run only for a single SELECT"):
        query.execute(history.data_dir, statement.format(root=root))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert query.execute(history.data_dir, "EXPLAIN ANALYZE SELECT count(*) FROM dicom_image_meta").rows


def test_no_file_outside_the_analytics_folder_is_read(history: History, tmp_path: Path) -> None:
    elsewhere = tmp_path / "other.csv"
    elsewhere.write_text("a\n1\n")
    with pytest.raises(query.QueryError, match=r"(?s)Permission.*only files under"):
        query.execute(history.data_dir, f"SELECT * FROM read_csv('{elsewhere}')")  # noqa: S608


def test_a_sql_error_names_duckdbs_message_and_the_tables(tmp_path: Path) -> None:
    with pytest.raises(query.QueryError) as raised:
        query.execute(tmp_path, "SELECT nope FROM dicom_image_meta")
    message = str(raised.value)
    assert 'Referenced column "nope" not found' in message
    assert "hint:" in message and "wado_access_log" in message


def test_each_format_prints_the_same_values() -> None:
    answer = Result(
        ["day", "n", "rate", "note"], [["2026-03-02", 12, 0.125, None], ["2026-03-03", 3, 1.0, "a,b"]]
    )
    table = render(answer, "table").splitlines()
    assert table[0].split() == ["day", "n", "rate", "note"]
    assert table[2].split() == ["2026-03-02", "12", "0.125"]
    assert table[-1] == "(2 rows)"
    assert table[2].index("12") + 2 == table[0].index("n") + 1  # numbers right-aligned
    assert list(csv.reader(io.StringIO(render(answer, "csv")))) == [
        ["day", "n", "rate", "note"],
        ["2026-03-02", "12", "0.125", ""],
        ["2026-03-03", "3", "1.0", "a,b"],
    ]
    assert json.loads(render(answer, "json")) == [
        {"day": "2026-03-02", "n": 12, "rate": 0.125, "note": None},
        {"day": "2026-03-03", "n": 3, "rate": 1.0, "note": "a,b"},
    ]


def test_sql_answers_are_plain_json_values(history: History) -> None:
    answer = query.execute(
        history.data_dir,
        "SELECT max(created_time) AS t, max(study_date) AS d, sum(file_size) AS s, "
        "CAST(1.5 AS DECIMAL(4, 2)) AS x FROM dicom_object_meta",
    )
    [[t, d, s, x]] = answer.rows
    newest = max(o["created_time"] for o in held(history, "dicom_object_meta"))
    assert (datetime.fromisoformat(t), d, x) == (datetime.fromisoformat(newest), "2026-01-15", 1.5)
    assert s == sum(o["file_size"] for o in held(history, "dicom_object_meta"))
    assert json.loads(json.dumps(answer.rows)) == answer.rows


def test_the_commands_print_and_fail_as_documented(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = settings.load({"PACSFLOW_DATA_DIR": str(history.data_dir)})
    query.print_sql(loaded, "SELECT count(*) AS n FROM conversion_record", "json")
    assert json.loads(capsys.readouterr().out) == [{"n": len(held(history, "conversion_record"))}]

    reports.print_report(loaded, None, "csv")
    listed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in listed] == [r.name for r in reports.catalogue()]

    reports.print_report(loaded, "storage_by_tenant", "table")
    assert capsys.readouterr().out.splitlines()[0].split() == [
        "tenant_id",
        "studies",
        "series",
        "instances",
        "bytes",
    ]

    with pytest.raises(
        reports.UnknownReport, match="no report 'nope': one of busiest_routes, busiest_studies"
    ):
        reports.print_report(loaded, "nope", "table")


def test_empty_tables_are_explained_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = settings.load({"PACSFLOW_DATA_DIR": str(tmp_path)})
    query.print_sql(loaded, "SELECT count(*) AS n FROM dicom_image_meta", "csv")
    out, err = capsys.readouterr()
    assert out == "n\n0\n"
    assert "no analytics files under" in err and "PACSFLOW_ANALYTICS=on" in err


def test_doris_aggregates_duckdb_lacks_are_rewritten_and_bad_sql_is_named() -> None:
    converted = reports.duckdb_sql(
        "SELECT PERCENTILE(a, 0.5), PERCENTILE_APPROX(a, 0.9, 2048) FROM t -- note"
    )
    assert converted == "SELECT QUANTILE_CONT(a, 0.5), APPROX_QUANTILE(a, 0.9) FROM t"
    with pytest.raises(reports.BadReport, match=r"x\.sql holds 2 statements"):
        reports.duckdb_sql("SELECT 1; SELECT 2", "x.sql")
    with pytest.raises(reports.BadReport, match=r"x\.sql is not Doris SQL"):
        reports.duckdb_sql("SELECT (1", "x.sql")
