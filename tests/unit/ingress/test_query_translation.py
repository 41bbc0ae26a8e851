"""A C-FIND identifier read as a QIDO-RS search (``ingress.scp.query``), and a hit answered."""

from __future__ import annotations

import orjson
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from ingress.scp.query import PATIENT_ROOT, STUDY_ROOT, answer, retrieval, translate
from pipeline.models import TenantId
from pipeline.stores.search import BY_KEYWORD, Hit, InvalidQuery, Level, statement

TENANT = TenantId("t1")


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def _conditions(query_level: str, model: str = STUDY_ROOT, **keys: object) -> dict[str, str]:
    query = translate(_identifier(query_level, **keys), TENANT, model)
    return {c.attribute.keyword: c.value for c in query.search.conditions}


def test_values_become_conditions_in_dicoms_own_syntax() -> None:
    found = _conditions(
        "STUDY",
        PatientName="DOE*",
        StudyDate="20200101-20201231",
        StudyInstanceUID=["1.2.3", "1.2.4"],
        ModalitiesInStudy=["CT", "MR"],
        AccessionNumber="",
        StudyDescription="",
    )
    assert found == {
        "PatientName": "DOE*",
        "StudyDate": "20200101-20201231",
        "StudyInstanceUID": "1.2.3\\1.2.4",  # split by the matcher, as QIDO's comma lists are
        "ModalitiesInStudy": "CT\\MR",
        "AccessionNumber": "",
        "StudyDescription": "",
    }
    sql, params = statement(
        translate(_identifier("STUDY", StudyInstanceUID=["1.2.3", "1.2.4"]), TENANT, STUDY_ROOT).search
    )
    assert ["1.2.3", "1.2.4"] in params and "s.study_uid = ANY(" in sql


@pytest.mark.parametrize(
    ("level", "expected"),
    [("PATIENT", Level.PATIENT), ("STUDY", Level.STUDY), ("SERIES", Level.SERIES), ("IMAGE", Level.INSTANCE)],
)
def test_levels(level: str, expected: Level) -> None:
    assert translate(_identifier(level, PatientID="P1"), TENANT, PATIENT_ROOT).search.level is expected


def test_empty_keys_below_the_level_are_only_returned() -> None:
    query = translate(_identifier("STUDY", SeriesInstanceUID="", SOPInstanceUID=""), TENANT, STUDY_ROOT)
    assert query.search.conditions == []
    assert [e.keyword for e in query.returned] == ["SOPInstanceUID", "SeriesInstanceUID"]


@pytest.mark.parametrize(
    ("level", "keys", "says"),
    [
        ("STUDY", {"InstitutionName": "X*"}, "InstitutionName (00080080) cannot be matched"),
        ("STUDY", {"NumberOfStudyRelatedInstances": "3"}, "is returned but cannot be matched"),
        ("STUDY", {"SeriesInstanceUID": "1.2.3"}, "is a series-level attribute"),
        ("PATIENT", {"StudyDate": "20200101"}, "is a study-level attribute"),
        ("STUDY", {"StudyDate": "20201231-20200101"}, "the range starts after it ends"),
        ("WHATEVER", {}, "QueryRetrieveLevel 'WHATEVER'"),
    ],
)
def test_what_cannot_be_matched_is_refused_by_name(level: str, keys: dict[str, str], says: str) -> None:
    with pytest.raises(InvalidQuery, match=says.replace("(", r"\(").replace(")", r"\)")):
        translate(_identifier(level, **keys), TENANT, PATIENT_ROOT)


def test_the_study_root_has_no_patient_level() -> None:
    with pytest.raises(InvalidQuery, match="Study Root model has no PATIENT level"):
        translate(_identifier("PATIENT", PatientID=""), TENANT, STUDY_ROOT)


def test_a_sequence_key_is_returned_but_not_matched_inside() -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = ""
    assert (
        translate(_identifier("STUDY", ReferencedStudySequence=[item]), TENANT, STUDY_ROOT).search.conditions
        == []
    )
    item.ReferencedSOPClassUID = CTImageStorage
    with pytest.raises(InvalidQuery, match="matching within a sequence is not supported"):
        translate(_identifier("STUDY", ReferencedStudySequence=[item]), TENANT, STUDY_ROOT)


def test_an_answer_holds_every_key_valued_from_the_fragment_or_the_counts() -> None:
    fragment = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]},
        "00080020": {"vr": "DA", "Value": ["20200315"]},
        "0008103E": {"vr": "LO", "Value": ["one instance's series"]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "studies/1/bulk"},
    }
    hit = Hit(
        "1.2.3", None, None, orjson.dumps(fragment), series_count=2, instance_count=5, modalities=("CT", "MR")
    )
    identifier = _identifier(
        "STUDY",
        PatientName="M*",
        StudyDate="",
        AccessionNumber="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
        SeriesDescription="",
    )
    identifier.add_new(0x7FE00010, "OW", None)
    out = answer(hit, translate(identifier, TENANT, STUDY_ROOT), "PACSFLOW")
    assert out.SpecificCharacterSet == "ISO_IR 192" and out.QueryRetrieveLevel == "STUDY"
    assert out.RetrieveAETitle == "PACSFLOW" and out.StudyInstanceUID == "1.2.3"
    assert str(out.PatientName) == "Müller^Jörg" and out.StudyDate == "20200315"
    assert out.AccessionNumber in ("", None)
    assert (out.NumberOfStudyRelatedSeries, out.NumberOfStudyRelatedInstances) == (2, 5)
    assert list(out.ModalitiesInStudy) == ["CT", "MR"]
    assert out.SeriesDescription in ("", None), "below the level: not one instance's value"
    assert out[0x7FE00010].value in (None, b""), "bulk data is not inlined"


def test_a_retrieval_needs_its_unique_key_and_searches_instances() -> None:
    query = retrieval(
        _identifier("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID=["1.2.3", "1.2.4"]),
        TENANT,
        STUDY_ROOT,
    )
    assert query.level is Level.INSTANCE
    assert {c.attribute.keyword: c.value for c in query.conditions} == {
        "StudyInstanceUID": "1.2",
        "SeriesInstanceUID": "1.2.3\\1.2.4",
    }
    for keys in ({"StudyInstanceUID": "1.2"}, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": ""}):
        with pytest.raises(InvalidQuery, match="SeriesInstanceUID must name"):
            retrieval(_identifier("SERIES", **keys), TENANT, STUDY_ROOT)
    assert BY_KEYWORD["PatientID"].level is Level.PATIENT
    patient = retrieval(_identifier("PATIENT", PatientID="P1"), TENANT, PATIENT_ROOT)
    assert [c.value for c in patient.conditions] == ["P1"]


def test_a_retrieval_reads_uids_only_with_the_same_matcher() -> None:
    query = retrieval(_identifier("STUDY", StudyInstanceUID="1.2"), TENANT, STUDY_ROOT, page_size=10)
    full, full_params = statement(query)
    uids, params = statement(query, uids_only=True)
    assert "json_fragment" in full and "json_fragment" not in uids
    assert params == full_params and params[-2:] == [11, 0]  # one more than the limit, from the first
    assert full.split("FROM", 1)[1] == uids.split("FROM", 1)[1], "the same conditions"
    with pytest.raises(ValueError, match="instance-level"):
        statement(
            translate(_identifier("STUDY", StudyInstanceUID=""), TENANT, STUDY_ROOT).search, uids_only=True
        )
