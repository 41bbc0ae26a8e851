"""The DICOMweb read path against real processes: QIDO-RS and WADO-RS from `pacsflow web`, over data
sent with dcmtk's storescu and pynetdicom, read with dicomweb-client and raw HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from pipeline.stores.postgres import migrate
from tests.conftest import query, scratch_database
from tests.integration.test_wado_metadata import get
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import require_dcmtk, store_one, storescu
from tests.support.services import Broker, Service, read_topic, wait_for
from tests.support.stack import indexed, running

OCTETS = "application/octet-stream"
pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    web: Service
    run: int
    scp_port: int
    sent: dict[str, Path] = field(default_factory=dict)
    """SOP instance UID -> the file that was sent."""

    def url(self, path: str, tenant: str | None = None) -> str:
        root = f"{self.base}/tenants/{tenant}/dicomweb" if tenant else f"{self.base}/dicomweb"
        return f"{root}{path}"

    def qido(self, path: str, tenant: str | None = None, **params: str) -> tuple[int, dict[str, str], Any]:
        status, headers, body = get(self.url(path, tenant) + "?" + urllib.parse.urlencode(params))
        return status, headers, json.loads(body)

    def uid(self, *parts: int | str) -> str:
        return uid(self.run, *parts)


def _study(
    stack: Stack, directory: Path, number: int, *, patient: str, pid: str, date: str, accession: str,
    description: str, referring: str, series: list[tuple[str, int]],
) -> list[Path]:  # fmt: skip
    files = []
    for position, (modality, count) in enumerate(series, start=1):
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        for n in range(1, count + 1):
            ds = dicomdata.image(
                sop_class,
                stack.uid(number),
                stack.uid(number, position),
                stack.uid(number, position, n),
                n,
                patient_id=pid,
                patient_name=patient,
                modality=modality,
                rows=16,
                columns=16,
                accession=accession,
                study_date=date,
            )
            ds.StudyDescription = description
            ds.ReferringPhysicianName = referring
            ds.SeriesNumber = position
            ds.SeriesDescription = f"{modality} series {position}"
            path = dicomdata.write(ds, directory / f"{number}-{position}-{n}.dcm")
            stack.sent[ds.SOPInstanceUID] = path
            files.append(path)
    return files


def _multiframe(stack: Stack, directory: Path, syntax: str, frames: int, position: int) -> Path:
    """A multi-frame instance whose frames all differ; compressed ones really encoded."""
    ds = dicomdata.image(
        CTImageStorage, stack.uid(9), stack.uid(9, position), stack.uid(9, position, 1), 1,
        patient_id="PMF", patient_name="Frames^Many", rows=32, columns=32, study_date="20250101",
        accession="MF1",
    )  # fmt: skip
    ds.NumberOfFrames = frames
    pixels = (np.arange(32 * 32 * frames, dtype=np.uint32).reshape(frames, 32, 32) * 13 + position) % 4096
    ds.SeriesNumber = position
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype("<u2").tobytes()
    else:
        ds.compress(syntax, pixels.astype(np.uint16), generate_instance_uid=False)
    path = dicomdata.write(ds, directory / f"mf-{position}.dcm")
    stack.sent[ds.SOPInstanceUID] = path
    return path


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("wado-read")
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        # A viewer of our own making: these tests need its routes, not OHIF from the npm registry.
        viewer = tmp / "viewer"
        viewer.mkdir()
        (viewer / "index.html").write_text("<!doctype html><title>viewer</title>")
        with running(
            broker.bootstrap,
            redis_url,
            tmp,
            dsn,
            common={"PACSFLOW_QIDO_MAX_LIMIT": "20"},
            scp={"PACSFLOW_SCP_TENANTS": "ALPHA=alpha"},
            web={"PACSFLOW_NODE_ID": "web-test", "PACSFLOW_VIEWER": str(viewer)},
        ) as services:
            run = uuid.uuid4().int % 10**12
            stack = Stack(services.base, dsn, tmp / "storage", services.web, run, services.scp_port)
            _send(stack, tmp / "send")
            yield stack


def _send(stack: Stack, send: Path) -> None:
    files = _study(stack, send, 1, patient="Doe^John", pid="P1", date="20240105", accession="ACC1",
                   description="CT Chest", referring="Welby^Marcus", series=[("CT", 6), ("MR", 3)])  # fmt: skip  # noqa: E501
    files += _study(stack, send, 2, patient="Doe^Jane", pid="P2", date="20240310", accession="ACC2",
                    description="MR Brain", referring="House^Gregory", series=[("MR", 4)])  # fmt: skip
    files += _study(stack, send, 3, patient="Smith^Anna", pid="P3", date="20231231", accession="XY_1%",
                    description="CT Abdomen", referring="Welby^Marcus", series=[("CT", 2)])  # fmt: skip
    for n in range(10, 35):  # enough studies to page through
        files += _study(stack, send, n, patient=f"Page^P{n:02d}", pid=f"PG{n}", date=f"202201{n - 9:02d}",
                        accession=f"PG{n}", description="paging", referring="", series=[("CT", 1)])  # fmt: skip  # noqa: E501
    files += [_multiframe(stack, send, ExplicitVRLittleEndian, 30, 1)]
    result = storescu(stack.scp_port, files)
    assert result.returncode == 0, result.stderr
    for position, syntax in ((2, JPEGLSLossless), (3, RLELossless)):
        path = _multiframe(stack, send, syntax, 10, position)
        assert store_one(stack.scp_port, path, syntax).Status == 0  # pynetdicom: it sends the file as it is
    alpha = _study(stack, send, 50, patient="Alpha^Only", pid="PA", date="20240105", accession="ACC1",
                   description="CT Chest", referring="Welby^Marcus", series=[("CT", 2)])  # fmt: skip
    assert storescu(stack.scp_port, alpha, called="ALPHA").returncode == 0
    indexed(stack.dsn, len(stack.sent))


def values(answer: list[dict[str, Any]], tag: str) -> list[Any]:
    return [a[tag]["Value"][0] if "Value" in a.get(tag, {}) else None for a in answer]


def studies_of(answer: list[dict[str, Any]]) -> set[str]:
    return set(values(answer, "0020000D"))


# --- QIDO-RS ----------------------------------------------------------------------------------


def test_study_search_returns_what_ohif_reads_with_counts_from_rows(stack: Stack) -> None:
    status, headers, answer = stack.qido("/studies", PatientID="P1")
    assert status == 200 and headers["content-type"].startswith("application/dicom+json")
    (study,) = answer
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert study["00080090"]["Value"] == [{"Alphabetic": "Welby^Marcus"}]
    assert study["00080020"]["Value"] == ["20240105"] and study["00080030"]["Value"] == ["101500"]
    assert study["00080050"]["Value"] == ["ACC1"] and study["00081030"]["Value"] == ["CT Chest"]
    assert study["00100030"]["Value"] == ["19700101"] and study["00100040"]["Value"] == ["F"]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [9]
    assert study["00081190"]["Value"] == [stack.url(f"/studies/{stack.uid(1)}")]
    # Another tenant's study with the same accession number is not the default tenant's.
    assert studies_of(stack.qido("/studies", AccessionNumber="ACC1")[2]) == {stack.uid(1)}


def test_matching_rules(stack: Stack) -> None:
    def found(path: str = "/studies", **params: str) -> set[str]:
        status, _, answer = stack.qido(path, **params)
        assert status == 200, answer
        return studies_of(answer)

    one, two, three = stack.uid(1), stack.uid(2), stack.uid(3)
    assert found(PatientName="Doe^John") == {one}
    assert found(PatientName="doe^john") == {one}  # PN is matched case-insensitively
    assert found(PatientName="Doe*") == {one, two}
    assert found(PatientName="Doe^Ja?e") == {two}
    assert found(PatientName="Doe") == set()  # without fuzzy matching, a name is the whole name
    assert found(PatientName="jo", fuzzymatching="true") == {one}  # a prefix of any component
    assert found(PatientName="do^ja", fuzzymatching="true") == {two}  # component by component
    assert found(PatientName="smi", fuzzymatching="false") == set()
    assert found(ReferringPhysicianName="welby*") == {one, three}
    assert found(StudyDate="20240101-20240331") == {one, two}
    assert found(StudyDate="20240201-") == {two, stack.uid(9)}
    assert found(StudyDate="-20231231") >= {three} and one not in found(StudyDate="-20231231")
    assert found(StudyDate="20240105") == {one}
    assert found(StudyTime="100000-110000", PatientID="P2") == {two}
    assert found(StudyInstanceUID=f"{one}\\{three}") == {one, three}
    assert found(StudyInstanceUID=f"{one},{two}") == {one, two}
    assert found(ModalitiesInStudy="MR", StudyDescription="*") >= {one, two}
    assert three not in found(ModalitiesInStudy="MR")
    assert found(ModalitiesInStudy="CT,MR", PatientName="Doe*") == {one, two}
    assert found(AccessionNumber="XY_1%") == {three}  # LIKE's own wildcards are literal
    assert found(AccessionNumber="XY?1*") == {three}
    assert found(StudyDescription="CT*") == {one, three}
    assert found(**{"00100020": "P2"}) == {two}  # a tag instead of a keyword
    assert found(PatientID="") >= {one, two, three}  # universal matching
    # Series and instance levels, and the study-scoped routes.
    status, _, answer = stack.qido(f"/studies/{one}/series")
    assert status == 200 and values(answer, "00080060") == ["CT", "MR"]
    assert values(answer, "00201209") == [6, 3] and values(answer, "00200011") == [1, 2]
    assert values(stack.qido(f"/studies/{one}/series", Modality="MR")[2], "0020000E") == [stack.uid(1, 2)]
    assert values(stack.qido("/series", Modality="MR", PatientID="P1")[2], "0020000E") == [stack.uid(1, 2)]
    answer = stack.qido(f"/studies/{one}/series/{stack.uid(1, 1)}/instances")[2]
    assert values(answer, "00200013") == [1, 2, 3, 4, 5, 6]
    assert values(answer, "00280010") == [16] * 6 and values(answer, "00080016") == [CTImageStorage] * 6
    answer = stack.qido(f"/studies/{one}/instances", InstanceNumber="2")[2]
    assert sorted(values(answer, "00080018")) == [stack.uid(1, 1, 2), stack.uid(1, 2, 2)]
    answer = stack.qido("/instances", SOPInstanceUID=stack.uid(2, 1, 3))[2]
    assert values(answer, "0020000D") == [two] and values(answer, "00100020") == ["P2"]
    answer = stack.qido("/instances", SOPClassUID=MRImageStorage, PatientID="P1")[2]
    assert len(answer) == 3


def test_includefield_adds_attributes_and_all_adds_the_modules(stack: Stack) -> None:
    one = stack.uid(1)
    answer = stack.qido("/studies", StudyInstanceUID=one, includefield="00280030,ImagePositionPatient")[2][0]
    assert answer["00280030"]["Value"] == [0.5, 0.5] and "00200032" in answer
    assert "00280030" not in stack.qido("/studies", StudyInstanceUID=one)[2][0]
    answer = stack.qido(f"/studies/{one}/series/{stack.uid(1, 1)}/instances", includefield="all")[2][0]
    assert answer["00080008" if "00080008" in answer else "00200037"]  # everything the fragment has
    assert answer["00200037"]["Value"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert answer["7FE00010"]["BulkDataURI"].startswith(stack.url(f"/studies/{one}/series/"))


def test_paging_is_stable_and_cut_at_the_maximum(stack: Stack) -> None:
    seen: list[str] = []
    for offset in range(0, 40, 7):
        status, headers, answer = stack.qido("/studies", PatientName="Page*", limit="7", offset=str(offset))
        assert status == 200
        seen += values(answer, "0020000D")
        if offset + 7 < 25:
            assert "additional results" in headers.get("warning", "")
    assert len(seen) == 25 and len(set(seen)) == 25  # no duplicates, none skipped
    dates = [a["00080020"]["Value"][0] for a in stack.qido("/studies", PatientName="Page*", limit="20")[2]]
    assert dates == sorted(dates, reverse=True)  # newest first
    status, headers, answer = stack.qido("/studies", PatientName="Page*", limit="500")
    assert status == 200 and len(answer) == 20  # PACSFLOW_QIDO_MAX_LIMIT
    assert "maximum" in headers["warning"] and "additional results" in headers["warning"]
    status, _, answer = stack.qido("/studies", PatientName="Nobody*")
    assert status == 200 and answer == []


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"PatientNam": "x"}, "unknown query key 'PatientNam'"),
        ({"SliceThickness": "1"}, "SliceThickness (00180050) cannot be matched"),
        ({"StudyDate": "2024-01-01"}, "StudyDate="),
        ({"StudyDate": "20241301"}, "is not a date"),
        ({"StudyDate": "20240301-20240101"}, "starts after it ends"),
        ({"StudyTime": "25"}, "StudyTime="),
        ({"limit": "-1"}, "limit=-1"),
        ({"limit": "ten"}, "not a whole number"),
        ({"offset": "-5"}, "offset=-5"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"includefield": "NoSuchThing"}, "includefield 'NoSuchThing'"),
        ({"StudyInstanceUID": "1.2.x"}, "StudyInstanceUID="),
        ({"SeriesInstanceUID": "1.2.3"}, "series-level attribute"),
        ({"NumberOfStudyRelatedInstances": "3"}, "cannot be matched"),
    ],
)
def test_bad_queries_are_400_naming_the_problem(stack: Stack, params: dict[str, str], reason: str) -> None:
    status, _, answer = stack.qido("/studies", **params)
    assert status == 400, answer
    assert reason in answer["error"]


def test_answers_are_gzipped_and_cached_until_the_index_changes(stack: Stack, redis_url: str) -> None:
    status, headers, _ = get(stack.url("/studies?PatientID=P2"), **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    first = stack.qido("/studies", PatientID="P2")[2]
    assert stack.qido("/studies", PatientID="P2")[2] == first
    cache = redis.Redis.from_url(redis_url)
    try:
        prefix = f"test-{stack.dsn.rsplit('/', 1)[1]}:default:qido:"
        assert cache.keys(f"{prefix}*"), "the answer was not cached"
        generation = int(cache.get(f"test-{stack.dsn.rsplit('/', 1)[1]}:default:generation") or 0)
    finally:
        cache.close()
    assert first[0]["00201208"]["Value"] == [4]
    # A new instance of the study: the next answer counts it (the index bumped the generation).
    path = dicomdata.write(
        dicomdata.image(MRImageStorage, stack.uid(2), stack.uid(2, 1), stack.uid(2, 1, 5), 5, patient_id="P2",
                        patient_name="Doe^Jane", modality="MR", rows=16, columns=16, accession="ACC2",
                        study_date="20240310"),
        stack.storage.parent / "late" / "late.dcm",
    )  # fmt: skip
    assert storescu(stack.scp_port, [path]).returncode == 0
    wait_for(
        lambda: query(stack.dsn, "SELECT 1 FROM dicom_instance_meta WHERE sop_uid = $1", stack.uid(2, 1, 5)),
        30,
        "the late instance indexed",
    )
    stack.sent[stack.uid(2, 1, 5)] = path
    assert stack.qido("/studies", PatientID="P2")[2][0]["00201208"]["Value"] == [5]
    cache = redis.Redis.from_url(redis_url)
    try:
        assert int(cache.get(f"test-{stack.dsn.rsplit('/', 1)[1]}:default:generation") or 0) > generation
    finally:
        cache.close()


# --- WADO-RS ----------------------------------------------------------------------------------


def client(stack: Stack, tenant: str | None = None) -> tuple[DICOMwebClient, requests.Session]:
    session = requests.Session()
    return DICOMwebClient(stack.url("", tenant), session=session), session


def test_retrieve_study_series_instance_byte_identical(stack: Stack) -> None:
    dicomweb, session = client(stack)
    with session:
        one = stack.uid(1)
        study = dicomweb.retrieve_study(one)
        assert len(study) == 9
        for ds in study:
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            assert dataset_bytes_of(out.getvalue()) == dataset_bytes(stack.sent[ds.SOPInstanceUID])
        series = dicomweb.retrieve_series(one, stack.uid(1, 2))
        assert sorted(ds.SOPInstanceUID for ds in series) == [stack.uid(1, 2, n) for n in (1, 2, 3)]
        instance = dicomweb.retrieve_instance(one, stack.uid(1, 1), stack.uid(1, 1, 4))
        assert instance.InstanceNumber == 4
        metadata = dicomweb.retrieve_series_metadata(one, stack.uid(1, 1))
        assert sorted(m["00200013"]["Value"][0] for m in metadata) == [1, 2, 3, 4, 5, 6]
        found = dicomweb.search_for_studies(
            search_filters={"PatientName": "Doe*"}, fields=["StudyDescription"]
        )
        assert studies_of(found) == {one, stack.uid(2)}
        found = dicomweb.search_for_series(one, search_filters={"Modality": "CT"})
        assert values(found, "0020000E") == [stack.uid(1, 1)]
        found = dicomweb.search_for_instances(one, stack.uid(1, 2), search_filters={"InstanceNumber": "3"})
        assert values(found, "00080018") == [stack.uid(1, 2, 3)]


def dataset_bytes_of(data: bytes) -> bytes:
    return data[dicomdata.dataset_offset(data) :]


def parts(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    message = message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [(p.get_content_type() + "".join(f";{k}={v}" for k, v in p.get_params()[1:]), p.get_payload(decode=True))  # noqa: E501
            for p in message.get_payload()]  # fmt: skip


def test_raw_accept_variants_and_406(stack: Stack) -> None:
    one, series, sop = stack.uid(1), stack.uid(1, 1), stack.uid(1, 1, 1)
    url = stack.url(f"/studies/{one}/series/{series}/instances/{sop}")
    expected = dataset_bytes(stack.sent[sop])
    for accept in (
        None,
        "*/*",
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        "multipart/related; type=application/dicom; transfer-syntax=*",
        "multipart/related; type=application/dicom",
        f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}',
    ):
        status, headers, body = get(url, **({"Accept": accept} if accept else {}))
        assert status == 200, (accept, body[:300])
        ((kind, data),) = parts(body, headers["content-type"])
        assert kind.startswith("application/dicom") and dataset_bytes_of(data) == expected
    status, _, body = get(url, Accept="application/dicom+xml")
    assert status == 406 and "transfer-syntax=*" in json.loads(body)["error"]
    status, _, body = get(
        url, Accept="multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
    )
    assert status == 406 and "cannot be converted" in json.loads(body)["error"]
    # HEAD: the headers of a GET, no body.
    response = requests.head(url, timeout=10)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["Content-Type"].startswith("multipart/related")


def test_answers_read_from_files_say_their_length_and_are_the_files(stack: Stack) -> None:
    """Instances and frames read as they are stored go out with a Content-Length (sent from the
    page cache): it is the body's length, and each part is its stored bytes."""
    one, series = stack.uid(1), stack.uid(1, 1)
    dicom = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    for path, count in (
        (f"/studies/{one}", 9),
        (f"/studies/{one}/series/{series}", 6),
        (f"/studies/{one}/series/{series}/instances/{stack.uid(1, 1, 3)}", 1),
    ):
        status, headers, body = get(stack.url(path), Accept=dicom)
        assert status == 200, body[:300]
        assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers
        got = [data for _, data in parts(body, headers["content-type"])]
        assert len(got) == count
        for data in got:
            sop = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes_of(data) == dataset_bytes(stack.sent[sop])
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    for position, frames in ((1, "30,2,2"), (2, "10,1"), (3, "2")):
        sop = stack.uid(9, position, 1)
        url = stack.url(
            f"/studies/{stack.uid(9)}/series/{stack.uid(9, position)}/instances/{sop}/frames/{frames}"
        )
        status, headers, body = get(url, Accept=ohif)
        assert status == 200, body[:300]
        assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers
        assert len(parts(body, headers["content-type"])) == len(frames.split(","))
    # HEAD: the length of the GET, no body.
    response = requests.head(
        stack.url(f"/studies/{one}/series/{series}"), headers={"Accept": dicom}, timeout=10
    )
    status, headers, body = get(stack.url(f"/studies/{one}/series/{series}"), Accept=dicom)
    assert response.headers["Content-Length"] == str(len(body)) and response.content == b""


def test_instances_are_transcoded_when_asked_and_keep_their_uids(stack: Stack) -> None:
    study = stack.uid(9)
    for position, accept, syntax in (
        (2, 'multipart/related; type="application/dicom"', ExplicitVRLittleEndian),  # the standard's default
        (1, f"multipart/related; type=application/dicom; transfer-syntax={RLELossless}", RLELossless),
    ):
        sop = stack.uid(9, position, 1)
        url = stack.url(f"/studies/{study}/series/{stack.uid(9, position)}/instances/{sop}")
        status, headers, body = get(url, Accept=accept)
        assert status == 200, body[:300]
        ((kind, data),) = parts(body, headers["content-type"])
        assert f"transfer-syntax={syntax}" in kind
        got = dcmread(io.BytesIO(data))
        assert got.file_meta.TransferSyntaxUID == syntax and got.SOPInstanceUID == sop
        assert np.array_equal(got.pixel_array, dcmread(stack.sent[sop]).pixel_array)


def test_frames_are_the_stored_frame_bytes(stack: Stack) -> None:
    dicomweb, session = client(stack)
    with session:
        for position, count in ((1, 30), (2, 10), (3, 10)):
            study, series, sop = stack.uid(9), stack.uid(9, position), stack.uid(9, position, 1)
            sent = dcmread(stack.sent[sop])
            if sent.file_meta.TransferSyntaxUID.is_compressed:
                expected = list(generate_frames(sent.PixelData, number_of_frames=count))
            else:
                size = 32 * 32 * 2
                expected = [sent.PixelData[i * size : (i + 1) * size] for i in range(count)]
            ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
            for accept in (
                ohif,
                ohif.replace("type=application/octet-stream", 'type="application/octet-stream"'),
            ):
                status, headers, body = get(
                    stack.url(f"/studies/{study}/series/{series}/instances/{sop}/frames/2,1,{count}"),
                    Accept=accept,
                )
                assert status == 200
                got = parts(body, headers["content-type"])
                assert [data for _, data in got] == [expected[1], expected[0], expected[count - 1]]
                syntax = ExplicitVRLittleEndian if position == 1 else sent.file_meta.TransferSyntaxUID
                assert all(f"transfer-syntax={syntax}" in kind for kind, _ in got)
            # dicomweb-client's default takes any syntax; asked for uncompressed, compressed frames are
            # decoded.
            assert dicomweb.retrieve_instance_frames(study, series, sop, frame_numbers=[3]) == [expected[2]]
            frames = dicomweb.retrieve_instance_frames(
                study, series, sop, frame_numbers=[3], media_types=((OCTETS, ExplicitVRLittleEndian),)
            )
            assert frames == [sent.pixel_array[2].astype("<u2").tobytes()]
            for frames_path, code, reason in (
                ("0", 400, "numbered from 1"),
                ("x", 400, "not a frame number"),
                (str(count + 1), 404, f"has {count} frame"),
            ):
                status, _, body = get(
                    stack.url(f"/studies/{study}/series/{series}/instances/{sop}/frames/{frames_path}"),
                    Accept=ohif,
                )
                assert status == code and reason in json.loads(body)["error"]


@pytest.mark.parametrize(("position", "syntax"), [(4, JPEGLSLossless), (5, ExplicitVRLittleEndian)])
def test_frames_of_an_instance_indexed_without_a_frame_index(
    stack: Stack, position: int, syntax: str
) -> None:
    """An instance indexed before frame indexes existed: its frames are found in the file, the
    same bytes, again and again."""
    path = _multiframe(stack, stack.storage.parent / "no-index", syntax, 7, position)
    assert store_one(stack.scp_port, path, syntax).Status == 0
    sop, series = stack.uid(9, position, 1), stack.uid(9, position)
    wait_for(
        lambda: query(stack.dsn, "SELECT 1 FROM dicom_instance_meta WHERE sop_uid = $1", sop), 30, "indexed"
    )
    query(stack.dsn, "UPDATE dicom_instance_meta SET frame_index = NULL WHERE sop_uid = $1", sop)
    sent = dcmread(path)
    if syntax == ExplicitVRLittleEndian:
        size = 32 * 32 * 2
        expected = [sent.PixelData[i * size : (i + 1) * size] for i in range(7)]
    else:
        expected = list(generate_frames(sent.PixelData, number_of_frames=7))
    url = stack.url(f"/studies/{stack.uid(9)}/series/{series}/instances/{sop}/frames/7,1,4")
    for _ in range(2):
        status, headers, body = get(
            url, Accept="multipart/related; type=application/octet-stream; transfer-syntax=*"
        )
        assert status == 200, body[:300]
        assert headers["content-length"] == str(len(body))
        assert [data for _, data in parts(body, headers["content-type"])] == [
            expected[6],
            expected[0],
            expected[3],
        ]


def test_bulkdata_uris_resolve_and_rendered_images_render(stack: Stack) -> None:
    dicomweb, session = client(stack)
    with session:
        one, series, sop = stack.uid(1), stack.uid(1, 1), stack.uid(1, 1, 2)
        metadata = dicomweb.retrieve_instance_metadata(one, series, sop)
        uri = metadata["7FE00010"]["BulkDataURI"]
        assert dicomweb.retrieve_bulkdata(uri) == [dcmread(stack.sent[sop]).PixelData]
    status, headers, body = get(
        stack.url(f"/studies/{one}/series/{series}/instances/{sop}/rendered"), Accept="image/png"
    )
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (16, 16)
    status, headers, body = get(
        stack.url(
            f"/studies/{stack.uid(9)}/series/{stack.uid(9, 2)}/instances/{stack.uid(9, 2, 1)}/frames/4/rendered?viewport=16,16&quality=80"  # noqa: E501
        )
    )
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (16, 16)
    for path in (f"/studies/{one}/thumbnail", f"/studies/{one}/series/{series}/thumbnail"):
        status, headers, body = get(stack.url(path))
        assert status == 200 and headers["content-type"] == "image/jpeg", body[:200]
        assert max(Image.open(io.BytesIO(body)).size) <= 128
    status, _, body = get(
        stack.url(f"/studies/{one}/series/{series}/instances/{sop}/rendered?window=1,2,3,4")
    )
    assert status == 400 and "window" in json.loads(body)["error"]
    status, _, body = get(
        stack.url(f"/studies/{one}/series/{series}/instances/{sop}/rendered"), Accept="image/gif"
    )
    assert status == 406


ROUTES = (
    "/studies", "/series", "/instances", "/studies/{s}", "/studies/{s}/series", "/studies/{s}/instances",
    "/studies/{s}/metadata", "/studies/{s}/thumbnail", "/studies/{s}/series/{se}",
    "/studies/{s}/series/{se}/instances", "/studies/{s}/series/{se}/metadata",
    "/studies/{s}/series/{se}/instances/{i}", "/studies/{s}/series/{se}/instances/{i}/metadata",
    "/studies/{s}/series/{se}/instances/{i}/frames/1", "/studies/{s}/series/{se}/instances/{i}/rendered",
    "/studies/{s}/series/{se}/instances/{i}/bulkdata/7FE00010",
)  # fmt: skip


def test_tenant_isolation_on_every_route(stack: Stack) -> None:
    study, series, sop = stack.uid(50), stack.uid(50, 1), stack.uid(50, 1, 1)
    for route in ROUTES:
        path = route.format(s=study, se=series, i=sop)
        query_string = f"?StudyInstanceUID={study}" if path in ("/studies", "/series", "/instances") else ""
        status, _, body = get(stack.url(path, "alpha") + query_string)
        assert status == 200, (route, body[:300])
        if query_string:
            assert studies_of(json.loads(body)) == {study}
        for tenant in (None, "beta"):
            status, _, body = get(stack.url(path, tenant) + query_string)
            if query_string or route.endswith(("/series", "/instances")):
                assert status == 200 and json.loads(body) == [], (route, tenant)
            else:
                assert status == 404, (route, tenant, status)


def test_every_request_is_one_access_log_record_and_one_log_line(stack: Stack, broker: Broker) -> None:
    # Ends in "f": the other requests' ids end in 0, 1 and 2, and must differ from it.
    marker = str(uuid.uuid4())[:-1] + "f"
    # Health checks and the viewer's files get a log line, not an analytics record.
    for other, path in (("1", "/health"), ("2", "/app-config.js")):
        status, _, _ = get(stack.base + path, **{"X-Request-ID": marker[:-1] + other})
        assert status == 200, path
    status, headers, _ = get(stack.url(f"/studies/{stack.uid(2)}/series"), **{"X-Request-ID": marker})
    assert status == 200 and headers["x-request-id"] == marker
    status, _, _ = get(
        stack.url(f"/studies/{stack.uid(2)}/series/1.2.3/metadata"), **{"X-Request-ID": marker[:-1] + "0"}
    )
    assert status == 404
    records = asyncio.run(
        read_topic(broker.bootstrap, "wado_access_log", 2, 30, lambda r: r["trace_id"][:-1] == marker[:-1])
    )
    found = {json.loads(r.value)["trace_id"]: json.loads(r.value) for r in records}
    assert set(found) == {marker, marker[:-1] + "0"}
    record = found[marker]
    assert record["route"] == "/dicomweb/studies/{study}/series" and record["status"] == 200
    assert record["study_uid"] == stack.uid(2) and record["tenant_id"] == "default"
    assert record["bytes"] > 0 and record["duration_ms"] > 0 and record["client_address"] == "127.0.0.1"
    assert record["worker_node_id"] == "web-test"
    assert found[marker[:-1] + "0"]["status"] == 404
    # The line is written once the answer has gone out: it may trail the client by a moment.
    lines = wait_for(
        lambda: [line for line in stack.web.events("request") if line.get("trace_id") == marker],
        10,
        "the request's log line",
    )
    assert len(lines) == 1 and lines[0]["status"] == 200 and lines[0]["route"] == record["route"]
