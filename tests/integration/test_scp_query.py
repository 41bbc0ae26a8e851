"""C-FIND against a real stack (`pacsflow scp`, `worker`, `web`): dcmtk's findscu at every level of
both roots answers exactly what QIDO-RS answers on the same stack for the same query, since both
are one matcher (``pipeline.stores.search``) over one index."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from pipeline.stores.postgres import migrate
from tests.conftest import ScpFactory, scratch_database
from tests.integration.test_wado_metadata import get
from tests.support import dicomdata
from tests.support.dimse import require_dcmtk, store_one, storescu
from tests.support.services import DCMTK, Broker, free_port, wait_for
from tests.support.stack import running

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]

BULK = 120
"""Instances of the BULK tenant: more than a page (PACSFLOW_QIDO_MAX_LIMIT) for paging and cancel."""
PAGE = 25


@dataclass
class Stack:
    base: str
    scp_port: int
    run: int
    folder: Path
    storage: Path

    def uid(self, *parts: int | str) -> str:
        return dicomdata.uid(self.run, *parts)

    def qido(self, path: str, tenant: str | None = None, **params: str) -> list[dict[str, Any]]:
        root = f"{self.base}/tenants/{tenant}/dicomweb" if tenant else f"{self.base}/dicomweb"
        status, _, body = get(f"{root}{path}?{urllib.parse.urlencode(params)}")
        assert status == 200, body
        return json.loads(body) if body else []


def _study(
    stack: Stack,
    folder: Path,
    number: int,
    *,
    patient: str,
    pid: str,
    date: str,
    series: list[tuple[str, int]],
) -> list[Path]:
    files = []
    for position, (modality, count) in enumerate(series, start=1):
        for n in range(1, count + 1):
            ds = dicomdata.image(
                CTImageStorage if modality == "CT" else MRImageStorage,
                stack.uid(number),
                stack.uid(number, position),
                stack.uid(number, position, n),
                n,
                patient_id=pid,
                patient_name=patient,
                modality=modality,
                rows=8,
                columns=8,
                accession=f"ACC{number}",
                study_date=date,
            )
            ds.StudyDescription = f"study {number}"
            ds.SeriesNumber = position
            ds.SeriesDescription = f"{modality} series {position}"
            files.append(dicomdata.write(ds, folder / f"{number}-{position}-{n}.dcm"))
    return files


def _count(stack: Stack, tenant: str | None) -> int:
    return len(stack.qido("/instances", tenant, limit=str(PAGE)))


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("scp-query")
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        with running(
            broker.bootstrap,
            redis_url,
            tmp,
            dsn,
            common={"PACSFLOW_QIDO_MAX_LIMIT": str(PAGE)},
            scp={"PACSFLOW_SCP_TENANTS": "ALPHA=alpha,BULK=bulk"},
        ) as services:
            stack = Stack(services.base, services.scp_port, uuid.uuid4().int % 10**12, tmp, tmp / "storage")
            send = tmp / "send"
            files = _study(
                stack, send, 1, patient="DOE^JOHN", pid="P1", date="20200315", series=[("CT", 3), ("MR", 2)]
            )
            files += _study(stack, send, 2, patient="Doe^Jane", pid="P2", date="20201120", series=[("MR", 2)])
            files += _study(
                stack, send, 3, patient="Smith^Anna", pid="P3", date="20210101", series=[("CT", 1)]
            )
            files += _study(stack, send, 4, patient="DOE^JOHN", pid="P1", date="20190101", series=[("CT", 1)])
            assert storescu(stack.scp_port, files).returncode == 0
            alpha = _study(stack, send, 5, patient="Doe^Alpha", pid="PA", date="20200601", series=[("CT", 1)])
            # A study without a PatientID: no patient at the PATIENT level.
            alpha += _study(
                stack, send, 8, patient="Nobody^Known", pid="", date="20200602", series=[("CT", 1)]
            )
            assert storescu(stack.scp_port, alpha, called="ALPHA").returncode == 0
            bulk = _study(
                stack, send, 6, patient="Bulk^Many", pid="PB", date="20200601", series=[("CT", BULK)]
            )
            assert storescu(stack.scp_port, bulk, called="BULK").returncode == 0
            # Indexed, as QIDO-RS says: pages of instances until each tenant's last is there.
            wait_for(lambda: len(stack.qido("/studies")) == 4, 60, "the default tenant's studies")
            wait_for(
                lambda: len(stack.qido("/instances", "bulk", offset=str(BULK - 1))) == 1,
                60,
                "the bulk instances",
            )
            wait_for(lambda: len(stack.qido("/instances", "alpha")) == 2, 60, "the alpha instances")
            wait_for(
                lambda: sum(s["00201208"]["Value"][0] for s in stack.qido("/studies")) == 9,
                60,
                "every instance",
            )
            yield stack


# --- dcmtk's findscu ----------------------------------------------------------------------------


def findscu(
    stack: Stack,
    root: str,
    level: str,
    keys: Mapping[str, str],
    *,
    called: str = "PACSFLOW",
    extra: Sequence[str] = (),
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """findscu's answers, as the files it extracts them to (``-X``), in the order they came."""
    out = stack.folder / f"find-{uuid.uuid4().hex}"
    out.mkdir()
    command = [
        str(DCMTK / "findscu"),
        "-aet",
        "FINDSCU",
        "-aec",
        called,
        "-to",
        "20",
        root,
        "-X",
        "-od",
        str(out),
        *extra,
    ]
    for key, value in {"QueryRetrieveLevel": level, **keys}.items():
        command += ["-k", f"{key}={value}" if value else key]
    command += ["127.0.0.1", str(stack.scp_port)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return result, [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _values(element: Mapping[str, Any] | None) -> list[Any] | None:
    return element.get("Value") if element else None


def _answers(datasets: list[Dataset], tags: list[str], unique: str, level: str) -> dict[str, dict[str, Any]]:
    """Each answer's values of ``tags`` (as DICOM JSON values), by its ``unique`` key."""
    out = {}
    for ds in datasets:
        as_json = ds.to_json_dict()
        assert _values(as_json.get("00080005")) == ["ISO_IR 192"]
        assert _values(as_json.get("00080052")) == [level]
        assert _values(as_json.get("00080054")) == ["PACSFLOW"]
        out[as_json[unique]["Value"][0]] = {tag: _values(as_json.get(tag)) for tag in tags}
    return out


def _qido_answers(answer: list[dict[str, Any]], tags: list[str], unique: str) -> dict[str, dict[str, Any]]:
    return {a[unique]["Value"][0]: {tag: _values(a.get(tag)) for tag in tags} for a in answer}


STUDY_KEYS = {
    "StudyInstanceUID": "0020000D",
    "PatientName": "00100010",
    "PatientID": "00100020",
    "PatientBirthDate": "00100030",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "StudyDescription": "00081030",
    "ModalitiesInStudy": "00080061",
    "NumberOfStudyRelatedSeries": "00201206",
    "NumberOfStudyRelatedInstances": "00201208",
}
SERIES_KEYS = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "Modality": "00080060",
    "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E",
    "NumberOfSeriesRelatedInstances": "00201209",
}
IMAGE_KEYS = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016",
    "InstanceNumber": "00200013",
    "Rows": "00280010",
}
_UNIQUE = {"STUDY": "0020000D", "SERIES": "0020000E", "IMAGE": "00080018"}
_QIDO = {"STUDY": "/studies", "SERIES": "/series", "IMAGE": "/instances"}


def same_as_qido(stack: Stack, root: str, level: str, returned: dict[str, str], **matching: str) -> set[str]:
    """findscu asking for ``returned`` (keyword -> tag) with the ``matching`` keys, compared with
    QIDO-RS asked the same: the same hits, and the same values of every returned key. Returns the
    hits' unique keys."""
    result, found = findscu(stack, root, level, {**dict.fromkeys(returned, ""), **matching})
    assert result.returncode == 0, result.stderr
    tags = list(returned.values())
    unique = _UNIQUE[level]
    qido = stack.qido(_QIDO[level], **matching, includefield=",".join(tags), limit=str(PAGE))
    answers = _answers(found, tags, unique, level)
    assert len(found) == len(answers), "an answer came twice"
    assert answers == _qido_answers(qido, tags, unique)
    return set(answers)


@pytest.mark.parametrize("root", ["-S", "-P"])
def test_study_level_wildcard_date_range_and_uid_list_match_qido(stack: Stack, root: str) -> None:
    one, two, three, four = (stack.uid(n) for n in (1, 2, 3, 4))
    assert same_as_qido(stack, root, "STUDY", STUDY_KEYS, PatientName="DOE*") == {one, two, four}
    assert same_as_qido(stack, root, "STUDY", STUDY_KEYS, StudyDate="20200101-20201231") == {one, two}
    assert same_as_qido(stack, root, "STUDY", STUDY_KEYS, StudyInstanceUID=f"{one}\\{three}") == {one, three}
    assert same_as_qido(stack, root, "STUDY", STUDY_KEYS, ModalitiesInStudy="MR") == {one, two}


@pytest.mark.parametrize("root", ["-S", "-P"])
def test_series_level_matches_qido(stack: Stack, root: str) -> None:
    one = stack.uid(1)
    assert same_as_qido(stack, root, "SERIES", SERIES_KEYS, StudyInstanceUID=one) == {
        stack.uid(1, 1),
        stack.uid(1, 2),
    }
    assert same_as_qido(stack, root, "SERIES", SERIES_KEYS, Modality="MR") == {
        stack.uid(1, 2),
        stack.uid(2, 1),
    }
    found = same_as_qido(stack, root, "SERIES", SERIES_KEYS, PatientName="doe^j*", SeriesDescription="CT*")
    assert found == {stack.uid(1, 1), stack.uid(4, 1)}


@pytest.mark.parametrize("root", ["-S", "-P"])
def test_image_level_matches_qido(stack: Stack, root: str) -> None:
    found = same_as_qido(
        stack, root, "IMAGE", IMAGE_KEYS, StudyInstanceUID=stack.uid(1), SeriesInstanceUID=stack.uid(1, 1)
    )
    assert found == {stack.uid(1, 1, n) for n in (1, 2, 3)}
    found = same_as_qido(
        stack, root, "IMAGE", IMAGE_KEYS, SOPInstanceUID=f"{stack.uid(1, 2, 2)}\\{stack.uid(3, 1, 1)}"
    )
    assert found == {stack.uid(1, 2, 2), stack.uid(3, 1, 1)}


def test_patient_level_groups_qido_studies_by_patient(stack: Stack) -> None:
    keys = {
        "PatientID": "00100020",
        "PatientName": "00100010",
        "PatientBirthDate": "00100030",
        "PatientSex": "00100040",
        "NumberOfPatientRelatedStudies": "00201200",
        "NumberOfPatientRelatedSeries": "00201202",
        "NumberOfPatientRelatedInstances": "00201204",
    }
    result, found = findscu(stack, "-P", "PATIENT", {**dict.fromkeys(keys, ""), "PatientName": "DOE*"})
    assert result.returncode == 0, result.stderr
    answers = _answers(found, list(keys.values()), "00100020", "PATIENT")
    # The same patients as QIDO-RS's studies for that name, with their counts summed up.
    expected: dict[str, dict[str, Any]] = defaultdict(lambda: {"studies": 0, "series": 0, "instances": 0})
    for study in stack.qido("/studies", PatientName="DOE*"):
        patient = expected[study["00100020"]["Value"][0]]
        patient["studies"] += 1
        patient["series"] += study["00201206"]["Value"][0]
        patient["instances"] += study["00201208"]["Value"][0]
        patient["name"] = study["00100010"]["Value"]
    assert set(answers) == set(expected) == {"P1", "P2"}
    for pid, answer in answers.items():
        want = expected[pid]
        assert answer["00100010"] == want["name"]
        assert answer["00100040"] == ["F"] and answer["00100030"] == ["19700101"]
        assert answer["00201200"] == [want["studies"]]
        assert answer["00201202"] == [want["series"]]
        assert answer["00201204"] == [want["instances"]]
    assert answers["P1"]["00201200"] == [2] and answers["P1"]["00201204"] == [6]
    # alpha's study without a PatientID is there, but is no patient.
    assert len(stack.qido("/studies", "alpha", PatientName="Nobody*")) == 1
    result, found = findscu(stack, "-P", "PATIENT", {"PatientID": "", "PatientName": ""}, called="ALPHA")
    assert result.returncode == 0, result.stderr
    patients = [ds.get("PatientID", "") for ds in found]
    assert "PA" in patients and "" not in patients, patients


def test_the_called_ae_title_picks_the_tenant(stack: Stack) -> None:
    result, found = findscu(
        stack, "-S", "STUDY", {"StudyInstanceUID": "", "PatientName": "DOE*"}, called="ALPHA"
    )
    assert result.returncode == 0, result.stderr
    assert [ds.StudyInstanceUID for ds in found] == [stack.uid(5)]
    assert found[0].RetrieveAETitle == "ALPHA"


def test_every_page_is_answered(stack: Stack) -> None:
    result, found = findscu(
        stack, "-S", "IMAGE", {"StudyInstanceUID": stack.uid(6), "SOPInstanceUID": ""}, called="BULK"
    )
    assert result.returncode == 0, result.stderr
    assert {ds.SOPInstanceUID for ds in found} == {stack.uid(6, 1, n) for n in range(1, BULK + 1)}
    assert len(found) == BULK > PAGE


# --- refusals and cancel: pynetdicom reads the statuses exactly ---------------------------------


def _find(stack: Stack, identifier: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind) -> list:
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("level", "keys", "named"),
    [
        ("STUDY", {"StudyInstanceUID": "", "InstitutionName": "General*"}, "InstitutionName (00080080)"),
        ("STUDY", {"StudyInstanceUID": "", "NumberOfStudyRelatedSeries": "2"}, "NumberOfStudyRelatedSeries"),
        ("STUDY", {"StudyDate": "2020"}, "StudyDate='2020'"),
        ("STUDY", {"SeriesInstanceUID": "1.2.3"}, "SeriesInstanceUID (0020000E) is a series-level"),
        ("PATIENT", {"PatientID": ""}, "the Study Root model has no PATIENT level"),
        ("NOWHERE", {"PatientID": ""}, "QueryRetrieveLevel 'NOWHERE'"),
    ],
)
def test_a_key_that_cannot_be_matched_is_refused_by_name(
    stack: Stack, level: str, keys: dict[str, str], named: str
) -> None:
    with dicomdata.lenient_writing():  # a malformed value, sent as it is
        ((status, answer),) = _find(stack, _identifier(level, **keys))
    assert answer is None
    assert status.Status == 0xA900
    assert status.ErrorComment.startswith(named), status.ErrorComment
    assert len(status.ErrorComment) <= 64


def test_a_key_that_cannot_be_matched_is_refused_to_findscu(stack: Stack) -> None:
    result, found = findscu(
        stack, "-S", "STUDY", {"StudyInstanceUID": "", "InstitutionName": "General*"}, extra=["-d"]
    )
    said = result.stdout + result.stderr
    assert found == []
    # dcmtk's name for 0xA900, and the ErrorComment as its debug output shows the response
    assert "DIMSE Status                  : 0xa900" in said, said
    assert "[InstitutionName (00080080) cannot be matched" in said, said  # the ErrorComment


def test_c_cancel_stops_the_answers(stack: Stack) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="BULK")
    assert assoc.is_established
    statuses = []
    try:
        answers = assoc.send_c_find(
            _identifier("IMAGE", StudyInstanceUID=stack.uid(6), SOPInstanceUID=""), model, msg_id=7
        )
        for status, _ in answers:
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=model)
    finally:
        assoc.release()
    assert statuses[0] == 0xFF00
    assert statuses[-1] == 0xFE00, f"the last status was 0x{statuses[-1]:04X} after {len(statuses)}"
    assert len(statuses) - 1 < BULK


def test_patient_root_at_patient_level_through_pynetdicom(stack: Stack) -> None:
    answers = _find(
        stack,
        _identifier("PATIENT", PatientID="P2", PatientName=""),
        PatientRootQueryRetrieveInformationModelFind,
    )
    (pending, answer), (final, none) = answers
    assert pending.Status == 0xFF00 and final.Status == 0x0000 and none is None
    assert answer.PatientName == "Doe^Jane" and answer.PatientID == "P2"


def test_without_the_database_queries_fail_saying_why_and_stores_still_work(
    start_scp: ScpFactory, broker: Broker, tmp_path: Path
) -> None:
    scp = start_scp(broker.bootstrap, database_url=f"postgresql://pacsflow@127.0.0.1:{free_port()}/nowhere")
    ds = dicomdata.image(CTImageStorage, dicomdata.uid(1), dicomdata.uid(1, 1), dicomdata.uid(1, 1, 1), 1)
    assert store_one(scp.port, dicomdata.write(ds, tmp_path / "one.dcm"), ExplicitVRLittleEndian).Status == 0
    ae = AE(ae_title="PYFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        identifier = _identifier("STUDY", StudyInstanceUID=dicomdata.uid(1))
        ((found, _),) = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
        ((got, _),) = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert found.Status == 0xA700 and found.ErrorComment.startswith("the index cannot be read")
    assert got.Status == 0xA701 and got.ErrorComment.startswith("the index cannot be read")


def test_an_association_that_queries_may_store_too(stack: Stack) -> None:
    """Served by pynetdicom's data phase (it accepted a Query/Retrieve context), its C-STORE goes
    to the same store as any other, under the called AE title's tenant."""
    ds = dicomdata.image(
        CTImageStorage, stack.uid(7), stack.uid(7, 1), stack.uid(7, 1, 1), 1, patient_name="Mixed^Assoc",
        patient_id="PM", rows=8, columns=8,
    )  # fmt: skip
    ae = AE(ae_title="PYMIXED")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", stack.scp_port, ae_title="ALPHA")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    stored = stack.storage / "alpha" / stack.uid(7) / stack.uid(7, 1) / f"{stack.uid(7, 1, 1)}.dcm"
    assert stored.is_file()
    wait_for(lambda: len(stack.qido("/studies", "alpha", PatientName="Mixed*")) == 1, 60, "the study indexed")
