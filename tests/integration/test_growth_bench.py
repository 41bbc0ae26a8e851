"""The growth benchmark's archive (tests/bench/growth.py), made at a tiny size on the tests' PostgreSQL:
what it generates is what it was asked for, and consistent the way pacsflow's index keeps it."""

from __future__ import annotations

import asyncio
import json
import random

import asyncpg
import pytest

from pipeline.models import TenantId
from pipeline.models.formats import uid_hash
from pipeline.stores import search
from pipeline.stores.search import BY_KEYWORD, Condition, Level, Search
from tests.bench import growth
from tests.conftest import query


def test_the_archive_holds_what_was_asked_grown_in_steps(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(growth, "CHUNK", 16)  # several transactions, two connections at a time
    first = asyncio.run(growth.grow(database, 0, 40))
    second = asyncio.run(growth.grow(database, 40, 100))
    asyncio.run(growth.add_big_series(database, (7, 12)))

    studies, series, instances = growth.expected(0, 100)
    assert (first.studies, second.studies) == (40, 60)
    assert first.series + second.series == series and first.instances + second.instances == instances
    patients = {growth.patient_of(n) for n in [*range(100), growth.big_study(7), growth.big_study(12)]}
    assert asyncio.run(growth.archive_counts(database)) == {
        "studies": studies + 2,
        "series": series + 2,
        "instances": instances + 7 + 12,
        "metadata_rows": series + 2,
        "patients": len(patients),
    }
    assert {growth.series_in_study(n) for n in range(100)} == {1, 2, 3}
    assert {growth.instances_in_series(n, 1) for n in range(100)} == {1, 2, 3, 4}


def test_rows_agree_with_each_other_as_the_index_keeps_them(database: str) -> None:
    asyncio.run(growth.grow(database, 0, 30))
    asyncio.run(growth.add_big_series(database, (5,)))
    # Counts are what the instance rows say; every series has its metadata row, current.
    stale = query(
        database,
        """
        SELECT s.series_uid FROM dicom_state_meta s
        LEFT JOIN (SELECT series_uid, count(*) AS n FROM dicom_instance_meta GROUP BY 1) i USING (series_uid)
        LEFT JOIN dicom_json_meta m USING (tenant_id, study_uid, series_uid)
        WHERE i.n IS DISTINCT FROM s.series_related_instances OR m.built_version IS DISTINCT FROM m.version
        """,
    )
    assert stale == []
    big = growth.study_uid(growth.big_study(5))
    assert (
        query(database, "SELECT series_related_instances FROM dicom_state_meta WHERE study_uid = $1", big)[0][
            "series_related_instances"
        ]
        == 5
    )
    for row in query(database, "SELECT * FROM dicom_state_meta"):
        assert row["study_uid_hash"] == uid_hash(row["study_uid"])
        assert row["series_uid_hash"] == uid_hash(row["series_uid"])
        assert row["study_date_origin"] == row["study_date"].strftime("%Y%m%d")
    # Each fragment is DICOM JSON saying its own instance's UIDs and its series row's values.
    rows = query(
        database,
        """
        SELECT i.sop_uid, i.instance_number, i.json_fragment, s.*
        FROM dicom_instance_meta i JOIN dicom_state_meta s USING (tenant_id, study_uid, series_uid)
        """,
    )
    for row in rows:
        fragment = json.loads(row["json_fragment"])
        assert fragment["0020000D"]["Value"] == [row["study_uid"]]
        assert fragment["0020000E"]["Value"] == [row["series_uid"]]
        assert fragment["00080018"]["Value"] == [row["sop_uid"]]
        assert fragment["00100020"]["Value"] == [row["patient_id"]]
        assert fragment["00100010"]["Value"] == [{"Alphabetic": row["patient_name"]}]
        assert fragment["00080020"]["Value"] == [row["study_date_origin"]]
        assert fragment["00200013"]["Value"] == [row["instance_number"]]
        assert list(fragment) == sorted(fragment)  # in tag order, as pydicom writes them


def test_the_bench_s_urls_name_what_was_generated(database: str) -> None:
    asyncio.run(growth.grow(database, 0, 50))

    async def studies_of_patient(n: int) -> int:
        conn = await asyncpg.connect(database)
        try:
            pid = growth.patient_id(growth.patient_of(n))
            condition = Condition(BY_KEYWORD["PatientID"], pid)
            hits, _ = await search.search(
                conn, Search(Level.STUDY, TenantId(growth.TENANT), conditions=[condition])
            )
            return len(hits)
        finally:
            await conn.close()

    for n in (0, 17, 49):
        expected = sum(1 for m in range(50) if growth.patient_of(m) == growth.patient_of(n))
        assert asyncio.run(studies_of_patient(n)) == expected
    instance_list = next(q for q in growth.queries("", 50) if q.key == "instance_list")
    rng = random.Random(3)
    for _ in range(20):
        _, study, _, series, _ = instance_list.urls(rng).rsplit("/", 4)
        assert query(
            database, "SELECT 1 FROM dicom_state_meta WHERE study_uid = $1 AND series_uid = $2", study, series
        )


def test_study_pages_are_exact_when_a_study_s_series_disagree_on_its_date(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The study list walks the date order and stops after a page (pipeline.stores.search): a study
    # whose series carry different dates is met more than once on that walk, which must neither
    # cost another study its place nor show it twice. Paged through, it equals the answer read
    # from every hit, and each study comes once.
    asyncio.run(growth.grow(database, 0, 120))
    newest = query(
        database,
        "SELECT study_uid FROM dicom_state_meta GROUP BY study_uid HAVING count(*) > 1 "
        "ORDER BY max(study_date) DESC, max(study_time) DESC LIMIT 12",
    )
    for n, row in enumerate(newest):  # one series of each moved years back, another to a later time
        query(
            database,
            "UPDATE dicom_state_meta SET study_date = study_date - (400 + $2) * interval '1 day',"
            " study_time = study_time - interval '1 minute' WHERE study_uid = $1 AND series_number = 1",
            row["study_uid"],
            n,
        )

    async def pages(
        conditions: list[Condition], window: int | None, limit: int
    ) -> list[tuple[str, int | None]]:
        conn = await asyncpg.connect(database)
        try:
            seen: list[tuple[str, int | None]] = []
            for offset in range(0, 200, limit):
                found = Search(
                    Level.STUDY, TenantId(growth.TENANT), conditions=conditions, limit=limit, offset=offset
                )
                if window is None:
                    sql, params = search.statement(found, window=None)
                    rows = [r for r in await conn.fetch(sql, *params) if r["study_uid"] is not None]
                    hits = rows[:limit]
                    seen += [(r["study_uid"], r["series_count"]) for r in hits]
                else:
                    answer, _ = await search.search(conn, found)
                    seen += [(h.study_uid, h.series_count) for h in answer]
            return seen
        finally:
            await conn.close()

    short = search._window_short
    widened: list[int | None] = []

    def counted(rows: list[asyncpg.Record], query: Search, window: int | None) -> bool:
        if answer := short(rows, query, window):
            widened.append(window)
        return answer

    monkeypatch.setattr(search, "_window_short", counted)
    for conditions in ([], [Condition(BY_KEYWORD["StudyDate"], "20160101-20251231")]):
        for limit in (5, 7, 50):
            exact = asyncio.run(pages(conditions, None, limit))
            windowed = asyncio.run(pages(conditions, 1, limit))
            assert windowed == exact
            assert len({uid for uid, _ in exact}) == len(exact) == 120
    assert widened  # the walk did meet a study twice, and looked further
