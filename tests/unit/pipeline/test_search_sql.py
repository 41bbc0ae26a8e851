"""The QIDO-RS statement builder (``pipeline.stores.search.statement``): SQL and parameters, no database.

The queries themselves run against PostgreSQL in tests/integration/test_wado_read.py; these pin down
what each search asks the database for, which those answers cannot show (a needless join returns
the same rows, only slower).
"""

from __future__ import annotations

import re
from datetime import date, time

import pytest

from pipeline.models import TenantId
from pipeline.stores.search import BY_KEYWORD, Condition, InvalidQuery, Level, Search, _Where, statement

TENANT = TenantId("hospital_a")
STUDY, SERIES = "1.2.3", "1.2.3.4"


def build(
    level: Level, study: str | None = None, series: str | None = None, **keys: str
) -> tuple[str, list[object]]:
    conditions = [Condition(BY_KEYWORD[k], v) for k, v in keys.items()]
    sql, params = statement(Search(level, TENANT, study, series, conditions, limit=25, offset=50))
    return " ".join(sql.split()), params


def numbered(sql: str, params: list[object]) -> None:
    """Every ``$n`` names a parameter, and every parameter is used."""
    used = {int(n) for n in re.findall(r"\$(\d+)", sql)}
    assert used == set(range(1, len(params) + 1)), (sorted(used), params)


def test_the_scoped_instance_list_reads_the_instance_rows_alone() -> None:
    # /studies/{study}/series/{series}/instances: what a viewer asks for every series it opens.
    sql, params = build(Level.INSTANCE, STUDY, SERIES)
    assert "dicom_state_meta" not in sql and "JOIN" not in sql
    assert "WHERE i.tenant_id = $1 AND i.study_uid = $2 AND i.series_uid = $3 ORDER BY" in sql
    assert "LIMIT $4 OFFSET $5" in sql
    assert params == [TENANT, STUDY, SERIES, 26, 50]  # one more than the limit: are there more?
    numbered(sql, params)


def test_instance_level_uid_and_instance_conditions_need_no_join() -> None:
    sql, params = build(
        Level.INSTANCE,
        STUDY,
        InstanceNumber="3",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        SeriesInstanceUID=SERIES,
    )
    assert "dicom_state_meta" not in sql
    assert "i.study_uid = $2" in sql and "i.instance_number = $3" in sql
    assert "i.sop_class_uid = ANY($4::text[])" in sql and "i.series_uid = ANY($5::text[])" in sql
    assert params[:5] == [TENANT, STUDY, 3, ["1.2.840.10008.5.1.4.1.1.2"], [SERIES]]
    numbered(sql, params)


def test_instance_level_patient_condition_joins_the_series_rows() -> None:
    sql, params = build(Level.INSTANCE, PatientID="P1")
    assert (
        "FROM dicom_instance_meta i JOIN dicom_state_meta s ON s.tenant_id = i.tenant_id "
        "AND s.study_uid = i.study_uid AND s.series_uid = i.series_uid" in sql
    )
    assert "WHERE i.tenant_id = $1 AND s.patient_id = $2 ORDER BY" in sql
    assert params == [TENANT, "P1", 26, 50]
    numbered(sql, params)


def test_instance_level_modalities_in_study_joins_and_groups_by_study() -> None:
    sql, params = build(Level.INSTANCE, ModalitiesInStudy="CT\\MR")
    assert "JOIN dicom_state_meta s" in sql
    assert (
        "i.study_uid IN (SELECT s.study_uid FROM dicom_state_meta s WHERE s.tenant_id = $1 "
        "GROUP BY s.study_uid HAVING bool_or(s.modality = ANY($2::text[])))" in sql
    )
    assert params == [TENANT, ["CT", "MR"], 26, 50]
    numbered(sql, params)


def test_study_level_patient_name_is_matched_in_the_hits_and_counted_over_all_series() -> None:
    sql, params = build(Level.STUDY, PatientName="Doe^J*", StudyDate="20240101-20240331")
    hits = sql[sql.index("WITH hits AS") : sql.index("), page AS")]
    assert (
        "WHERE s.tenant_id = $1 AND (lower(s.patient_name) LIKE $2 OR lower(s.patient_name) LIKE $2 || '=%') "
        "AND s.study_date >= $3 AND s.study_date <= $4 GROUP BY s.study_uid" in hits
    )
    # The page counts every series of a hit study, not only those matching: no condition there.
    page = sql[sql.index("), page AS") : sql.index("SELECT page.*")]
    assert "WHERE s.tenant_id = $1 GROUP BY" in page and "LIMIT $5 OFFSET $6" in page
    assert params == [TENANT, "doe^j%", date(2024, 1, 1), date(2024, 3, 31), 26, 50]
    numbered(sql, params)


def test_study_level_modalities_in_study_is_a_having() -> None:
    sql, params = build(Level.STUDY, ModalitiesInStudy="CT,MR", AccessionNumber="A1")
    assert "WHERE s.tenant_id = $1 AND s.accession_number = $3 GROUP BY s.study_uid HAVING " in sql
    assert "HAVING bool_or(s.modality = ANY($2::text[]))" in sql
    assert params == [TENANT, ["CT", "MR"], "A1", 26, 50]
    numbered(sql, params)


def test_series_level_in_a_study() -> None:
    sql, params = build(Level.SERIES, STUDY, Modality="MR", SeriesNumber="2")
    assert "FROM dicom_state_meta s WHERE s.tenant_id = $1 AND s.study_uid = $2 AND s.modality = $3 " in sql
    assert "AND s.series_number = $4 ORDER BY" in sql and "LIMIT $5 OFFSET $6" in sql
    assert params == [TENANT, STUDY, "MR", 2, 26, 50]
    numbered(sql, params)


@pytest.mark.parametrize(
    ("keyword", "value", "condition", "values"),
    [
        ("AccessionNumber", "XY_1%", "s.accession_number = $2", ["XY_1%"]),  # no wildcard: as it is
        ("AccessionNumber", "XY?1*", "s.accession_number LIKE $2", ["XY_1%"]),
        ("AccessionNumber", "A_%*", "s.accession_number LIKE $2", ["A\\_\\%%"]),  # LIKE's own: literal
        ("AccessionNumber", "A\\B*", "s.accession_number LIKE $2", ["A\\\\B%"]),
        ("PatientSex", "F", "s.patient_sex = $2", ["F"]),
        ("PatientSex", "F\\O", "s.patient_sex = ANY($2::text[])", [["F", "O"]]),
        ("PatientSex", "?", "s.patient_sex LIKE $2", ["_"]),
        ("StudyDate", "20240105", "s.study_date = $2", [date(2024, 1, 5)]),
        ("StudyDate", "20240201-", "s.study_date >= $2", [date(2024, 2, 1)]),
        ("StudyDate", "-20231231", "s.study_date <= $2", [date(2023, 12, 31)]),
        ("StudyTime", "100000-110000", "s.study_time >= $2 AND s.study_time <= $3", [time(10), time(11)]),
        # NUL padding is the UID's, as a stored UID has it (PostgreSQL refuses NUL in text).
        ("StudyInstanceUID", "1.2.3\x00", "s.study_uid = ANY($2::text[])", [["1.2.3"]]),
        (
            "StudyInstanceUID",
            "1.2.3\\1.2.4, 1.2.5",
            "s.study_uid = ANY($2::text[])",
            [["1.2.3", "1.2.4", "1.2.5"]],
        ),
        (
            "PatientName",
            "Doe",
            "(lower(s.patient_name) LIKE $2 OR lower(s.patient_name) LIKE $2 || '=%')",
            ["doe"],
        ),
    ],
)
def test_matching_conditions(keyword: str, value: str, condition: str, values: list[object]) -> None:
    sql, params = build(Level.STUDY, **{keyword: value})
    assert f"WHERE s.tenant_id = $1 AND {condition} GROUP BY" in sql
    assert params == [TENANT, *values, 26, 50]
    numbered(sql, params)


def test_fuzzy_names_are_a_prefix_per_component() -> None:
    conditions = [Condition(BY_KEYWORD["PatientName"], "do^ja*")]
    sql, params = statement(Search(Level.STUDY, TENANT, conditions=conditions, fuzzy=True))
    assert "lower(s.patient_name) ~ $2" in sql
    assert params[1] == r"^do[^^=]*\^ja[^^=]*"
    one = [Condition(BY_KEYWORD["PatientName"], "jo")]
    assert statement(Search(Level.STUDY, TENANT, conditions=one, fuzzy=True))[1][1] == r"(^|[\^ =])jo"


@pytest.mark.parametrize("value", ["", "*"])
def test_universal_matching_adds_no_condition(value: str) -> None:
    sql, params = build(Level.STUDY, PatientID=value)
    assert "WHERE s.tenant_id = $1 GROUP BY" in sql and params == [TENANT, 26, 50]


@pytest.mark.parametrize(
    ("level", "keys", "reason"),
    [
        (Level.STUDY, {"SeriesInstanceUID": "1.2.3"}, "series-level attribute"),
        (Level.SERIES, {"SOPInstanceUID": "1.2.3"}, "instance-level attribute"),
        (Level.STUDY, {"NumberOfStudyRelatedInstances": "3"}, "cannot be matched"),
        (Level.STUDY, {"StudyDate": "20240301-20240101"}, "starts after it ends"),
        (Level.STUDY, {"StudyDate": "2024-01-01"}, "StudyDate="),
        (Level.STUDY, {"StudyDate": "-"}, "at least one end"),
        (Level.SERIES, {"SeriesNumber": "\u0661"}, "SeriesNumber="),  # a digit to int(), not to DICOM
        (Level.STUDY, {"ModalitiesInStudy": "C*"}, "list the modalities"),
        (Level.STUDY, {"StudyInstanceUID": "1.2.x"}, "StudyInstanceUID="),
        # Only spaces around list items are insignificant: a control character is part of the UID.
        (Level.STUDY, {"StudyInstanceUID": "1.2.3\n"}, "not a valid UID"),
        (Level.INSTANCE, {"SOPInstanceUID": "1.2.3,1.2.4\r"}, "not a valid UID"),
        (Level.INSTANCE, {"SOPClassUID": "\t1.2.3"}, "not a valid UID"),
        # Nor does any other value hold one; a NUL would reach PostgreSQL, which refuses it.
        (Level.STUDY, {"PatientID": "P1\x00"}, "control character"),
        (Level.STUDY, {"AccessionNumber": "A\n"}, "control character"),
        (Level.STUDY, {"PatientName": "Doe\x7f"}, "control character"),
    ],
)
def test_what_cannot_be_searched_is_refused_with_the_reason(
    level: Level, keys: dict[str, str], reason: str
) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(reason)):
        build(level, **keys)


def test_a_condition_on_something_that_is_not_a_column_is_a_bug_not_a_bad_query() -> None:
    where = _Where([TENANT])
    with pytest.raises(TypeError, match="not a column"):
        where.add("i", "i.study_uid = $2")  # an alias alone: the mistake that once joined needlessly
    where.add("i.study_uid", "i.study_uid = $2")
    where.add("s.patient_id", "s.patient_id = $3")
    assert where.instance == ["i.study_uid = $2"] and where.state == ["s.patient_id = $3"]
