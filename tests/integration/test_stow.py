"""STOW-RS against real processes: `pacsflow web` (and the worker that indexes what it stores),
posted to with dicomweb-client and with raw, streamed HTTP."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

from tests.conftest import query
from tests.support import dicomdata
from tests.support.services import Broker, Service, wait_for
from tests.support.stack import on_a_new_database

pytestmark = [pytest.mark.broker]
WINDOW_S = 1.0  # PACSFLOW_METADATA_WINDOW_S of the stack's worker
BOUNDARY = "stow-test-boundary"
DICOM_PARTS = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
BIG_FRAMES = 600  # 512 x 512 x 16 bits: 300 MiB of pixel data
MB = 1024 * 1024


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    web: Service
    run: int

    def url(self, path: str, tenant: str | None = None) -> str:
        root = f"{self.base}/tenants/{tenant}/dicomweb" if tenant else f"{self.base}/dicomweb"
        return f"{root}{path}"

    def uid(self, *parts: int | str) -> str:
        return dicomdata.uid(self.run, *parts)

    def qido(self, path: str, tenant: str | None = None) -> list[dict[str, Any]]:
        response = requests.get(self.url(path, tenant), timeout=10)
        assert response.status_code in (200, 204), response.text
        return response.json() if response.status_code == 200 else []

    def files(self, tenant: str = "default") -> list[Path]:
        return sorted((self.storage / tenant).glob("*/*/*.dcm")) if (self.storage / tenant).is_dir() else []


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stow")
    limits = {"PACSFLOW_STOW_MAX_PART_BYTES": str(340 * MB), "PACSFLOW_STOW_MAX_REQUEST_BYTES": str(350 * MB)}
    web = {**limits, "PACSFLOW_VIEWER": "off"}
    with on_a_new_database(broker.bootstrap, redis_url, tmp, scp=None, web=web) as s:
        yield Stack(s.base, s.dsn, tmp / "storage", s.web, uuid.uuid4().int % 10**12)


def instance(stack: Stack, study: int, series: int, n: int, *, sop_class: str = CTImageStorage) -> Dataset:
    ds = dicomdata.image(
        sop_class,
        stack.uid(study),
        stack.uid(study, series),
        stack.uid(study, series, n),
        n,
        patient_id=f"P{study}",
        modality="CT" if sop_class == CTImageStorage else "MR",
        rows=16,
        columns=16,
    )
    ds.SeriesNumber = series
    return ds


def dataset_part(posted: bytes) -> bytes:
    """The dataset of a posted file, after its File Meta Information (with or without preamble):
    walked here element by element, not with the code under test."""
    at = 132 if posted[128:132] == b"DICM" else 0
    while posted[at : at + 2] == b"\x02\x00":
        vr = posted[at + 4 : at + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            at += 12 + struct.unpack("<I", posted[at + 8 : at + 12])[0]
        else:
            at += 8 + struct.unpack("<H", posted[at + 6 : at + 8])[0]
    return posted[at:]


def multipart(parts: Iterable[tuple[str, bytes]]) -> bytes:
    out = b""
    for content_type, body in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post(url: str, body: bytes | Iterable[bytes], content_type: str = DICOM_PARTS) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=600)


def sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return answer.get(tag, {}).get("Value", [])  # type: ignore[no-any-return]


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def visible(stack: Stack, study: str, series: str, sops: set[str]) -> bool:
    found = {value(i, "00080018") for i in stack.qido(f"/studies/{study}/series/{series}/instances")}
    if found != sops:
        return False
    response = requests.get(stack.url(f"/studies/{study}/series/{series}/metadata"), timeout=10)
    return response.status_code == 200 and {value(i, "00080018") for i in response.json()} == sops


def test_dicomweb_client_stores_a_study_that_reads_back_byte_for_byte(stack: Stack) -> None:
    datasets = [instance(stack, 1, 1, n) for n in (1, 2, 3)]
    # Read back from files, as most uploaders do: these carry a preamble and a sound meta, kept as
    # posted; the ones made in memory are written by pydicom without one, and get it here.
    folder = stack.storage.parent / "sent"
    datasets += [
        pydicom.dcmread(
            dicomdata.write(instance(stack, 1, 2, n, sop_class=MRImageStorage), folder / f"{n}.dcm")
        )
        for n in (1, 2)
    ]
    posted: dict[str, bytes] = {}
    for ds in datasets:
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds)  # what dicomweb-client sends
        posted[ds.SOPInstanceUID] = dataset_part(out.getvalue())
    dicomweb = DICOMwebClient(stack.url(""))
    answer = dicomweb.store_instances(datasets)
    stored_at = time.monotonic()
    study = stack.uid(1)
    referenced = answer.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced) == sorted(posted)
    assert {item.ReferencedSOPClassUID for item in referenced} == {CTImageStorage, MRImageStorage}
    assert answer.RetrieveURL == stack.url(f"/studies/{study}")
    assert "FailedSOPSequence" not in answer
    for item in referenced:
        assert item.RetrieveURL.startswith(stack.url(f"/studies/{study}/series/"))
        assert item.RetrieveURL.endswith(f"/instances/{item.ReferencedSOPInstanceUID}")
    # Durable before the answer: the files are there, each dataset exactly as posted.
    files = list((stack.storage / "default" / study).glob("*/*.dcm"))
    assert {dataset_part(p.read_bytes()) for p in files} == set(posted.values())
    assert all(p.read_bytes()[128:132] == b"DICM" for p in files)
    # Searchable and in the metadata within a metadata window and a second of the answer.
    expected = {
        stack.uid(1, 1): {stack.uid(1, 1, n) for n in (1, 2, 3)},
        stack.uid(1, 2): {stack.uid(1, 2, 1), stack.uid(1, 2, 2)},
    }
    wait_for(
        lambda: all(visible(stack, study, series, sops) for series, sops in expected.items()),
        WINDOW_S + 1 - (time.monotonic() - stored_at),
        "both series in QIDO-RS and in their metadata",
        interval=0.05,
    )
    found = dicomweb.search_for_instances(study)
    assert sorted(value(i, "00080018") for i in found) == sorted(posted)
    for ds in datasets:
        back = dicomweb.retrieve_instance(study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        out = io.BytesIO()
        back.save_as(out, enforce_file_format=True)
        assert dataset_part(out.getvalue()) == posted[ds.SOPInstanceUID]


def test_a_resent_instance_replaces_its_file_and_counts_once(stack: Stack) -> None:
    ds = instance(stack, 2, 1, 1)
    assert (
        post(stack.url("/studies"), multipart([("application/dicom", dicomdata.encode(ds))])).status_code
        == 200
    )
    ds.PatientName = "Doe^Resent"
    assert (
        post(stack.url("/studies"), multipart([("application/dicom", dicomdata.encode(ds))])).status_code
        == 200
    )
    (path,) = (stack.storage / "default" / stack.uid(2)).glob("*/*.dcm")
    assert str(pydicom.dcmread(path).PatientName) == "Doe^Resent"

    def indexed_again() -> bool:
        studies = stack.qido(f"/studies?StudyInstanceUID={stack.uid(2)}")
        return bool(studies) and studies[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^Resent"}]

    wait_for(indexed_again, 30, "the re-sent instance indexed")
    (study,) = stack.qido(f"/studies?StudyInstanceUID={stack.uid(2)}")
    assert value(study, "00201208") == 1


def test_another_tenant_stores_under_its_own_prefix(stack: Stack) -> None:
    ds = instance(stack, 3, 1, 1)
    response = post(stack.url("/studies", "alpha"), multipart([("application/dicom", dicomdata.encode(ds))]))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert value(sequence(answer, "00081199")[0], "00081190").startswith(stack.url("/studies/", "alpha"))
    assert [p.name for p in stack.files("alpha")] == [f"{ds.SOPInstanceUID}.dcm"]
    wait_for(lambda: stack.qido(f"/studies?StudyInstanceUID={stack.uid(3)}", "alpha"), 30, "alpha's study")
    assert stack.qido(f"/studies?StudyInstanceUID={stack.uid(3)}") == []


def test_mixed_parts_store_the_good_one_and_report_the_others(stack: Stack) -> None:
    study = stack.uid(4)
    good = instance(stack, 4, 1, 1)
    stranger = instance(stack, 5, 1, 1)  # another study, posted to /studies/<study>
    response = post(
        stack.url(f"/studies/{study}"),
        multipart(
            [
                ("application/dicom", b"this is not a DICOM file at all"),
                ("application/dicom", dicomdata.encode(good)),
                ("application/dicom", dicomdata.encode(stranger)),
            ]
        ),
    )
    assert response.status_code == 202, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    answer = response.json()
    (stored,) = sequence(answer, "00081199")
    assert value(stored, "00081155") == good.SOPInstanceUID
    assert value(stored, "00081150") == CTImageStorage
    failed = sequence(answer, "00081198")
    assert [value(f, "00081197") for f in failed] == [0xC000, 0xC122]
    assert "00081155" not in failed[0]
    assert value(failed[1], "00081155") == stranger.SOPInstanceUID
    assert value(failed[1], "00081150") == CTImageStorage
    assert value(answer, "00081190") == stack.url(f"/studies/{study}")
    assert "not the study" in response.headers["Warning"]
    # Exactly one instance stored: on disk, and in QIDO once indexed.
    assert [p.name for p in (stack.storage / "default").glob(f"{study}/*/*.dcm")] == [
        f"{good.SOPInstanceUID}.dcm"
    ]
    assert not (stack.storage / "default" / stack.uid(5)).exists()
    wait_for(lambda: stack.qido(f"/studies/{study}/instances"), 30, "the stored instance in QIDO")
    assert [value(i, "00080018") for i in stack.qido(f"/studies/{study}/instances")] == [good.SOPInstanceUID]
    assert stack.qido(f"/studies?StudyInstanceUID={stack.uid(5)}") == []
    assert not list((stack.storage / ".stow").iterdir()), "no part is left behind"


def test_nothing_stored_is_409(stack: Stack) -> None:
    response = post(stack.url("/studies"), multipart([("application/dicom", b"\0" * 10)]))
    assert response.status_code == 409
    (failed,) = sequence(response.json(), "00081198")
    assert value(failed, "00081197") == 0xC000


def test_bad_requests_have_readable_answers(stack: Stack) -> None:
    empty = post(stack.url("/studies"), b"")
    assert empty.status_code == 400 and "not a readable multipart/related" in empty.json()["error"]
    no_parts = post(stack.url("/studies"), f"--{BOUNDARY}--\r\n".encode())
    assert no_parts.status_code == 400 and "no parts" in no_parts.json()["error"]
    for wrong in (
        "application/dicom",
        "multipart/related; type=application/dicom+json; boundary=x",
        "text/plain",
    ):
        answer = post(stack.url("/studies"), b"x", content_type=wrong)
        assert answer.status_code == 415, wrong
        assert 'multipart/related; type="application/dicom"' in answer.json()["error"]
    bad_study = post(stack.url("/studies/1.2.x"), multipart([]))
    assert bad_study.status_code == 400
    for accept, status in (("image/png", 406), ("application/dicom+json", 400), ("*/*; q=0.5", 400)):
        answer = requests.post(
            stack.url("/studies"),
            data=f"--{BOUNDARY}--\r\n".encode(),
            headers={"Content-Type": DICOM_PARTS, "Accept": accept},
            timeout=10,
        )
        assert answer.status_code == status, (accept, answer.text)
    # A declared length beyond the limit is refused before a byte of the body is read.
    connection = http.client.HTTPConnection("127.0.0.1", int(stack.base.rsplit(":", 1)[1]), timeout=10)
    connection.putrequest("POST", "/dicomweb/studies")
    connection.putheader("Content-Type", DICOM_PARTS)
    connection.putheader("Content-Length", str(351 * MB))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "PACSFLOW_STOW_MAX_REQUEST_BYTES" in json.loads(response.read())["error"]
    connection.close()


def _big_instance(stack: Stack, path: Path) -> Path:
    """A 300 MiB multi-frame instance, written to disk a megabyte at a time."""
    ds = dicomdata.image(
        CTImageStorage, stack.uid(6), stack.uid(6, 1), stack.uid(6, 1, 1), 1, rows=512, columns=512
    )
    ds.NumberOfFrames = BIG_FRAMES
    del ds.PixelData
    dicomdata.write(ds, path)
    frame = bytes(range(256)) * (512 * 512 * 2 // 256)
    with path.open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(frame) * BIG_FRAMES))
        for n in range(BIG_FRAMES):
            out.write(frame[n % 256 :] + frame[: n % 256])  # frames differ
    return path


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _streamed(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with path.open("rb") as source:
        while chunk := source.read(MB):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _digest(data: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in data:
        digest.update(chunk)
    return digest.hexdigest()


def _dataset_digest(path: Path) -> str:
    with path.open("rb") as source:
        head = source.read(64 * 1024)
        offset = len(head) - len(dataset_part(head))
        source.seek(offset)
        return _digest(iter(lambda: source.read(MB), b""))


def test_a_300_mb_instance_is_streamed_to_disk_not_held_in_memory(stack: Stack) -> None:
    big = _big_instance(stack, stack.storage.parent / "big.dcm")
    assert big.stat().st_size > 300 * MB
    assert stack.web.process is not None
    pid = stack.web.process.pid
    before = _kib(pid, "VmRSS")
    response = post(stack.url("/studies"), _streamed(big))  # chunked: no length known up front
    assert response.status_code == 200, response.text
    grown_mb = (_kib(pid, "VmHWM") - before) / 1024
    assert grown_mb < 50, f"the web process grew by {grown_mb:.0f} MB while storing 300 MB"
    (stored,) = (stack.storage / "default" / stack.uid(6)).glob("*/*.dcm")
    assert _dataset_digest(stored) == _dataset_digest(big)
    wait_for(lambda: stack.qido(f"/studies/{stack.uid(6)}/instances"), 30, "the large instance in QIDO")
    (found,) = stack.qido(f"/studies/{stack.uid(6)}/instances")
    assert value(found, "00280008") == BIG_FRAMES
    big.unlink()


@pytest.fixture(scope="module")
def small(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A web server alone, with small STOW-RS limits."""
    tmp = tmp_path_factory.mktemp("stow-small")
    limits = {"PACSFLOW_STOW_MAX_PART_BYTES": str(MB), "PACSFLOW_STOW_MAX_REQUEST_BYTES": str(3 * MB)}
    with on_a_new_database(broker.bootstrap, redis_url, tmp, scp=None, worker=None, web=limits) as s:
        yield Stack(s.base, s.dsn, tmp / "storage", s.web, uuid.uuid4().int % 10**12)


def _sized(stack: Stack, n: int, rows: int) -> bytes:
    ds = dicomdata.image(
        CTImageStorage, stack.uid(7), stack.uid(7, 1), stack.uid(7, 1, n), n, rows=rows, columns=512
    )
    return dicomdata.encode(ds)


def test_limits_are_counted_while_streaming(small: Stack) -> None:
    def chunked(body: bytes) -> Iterator[bytes]:
        for at in range(0, len(body), 64 * 1024):
            yield body[at : at + 64 * 1024]

    too_big = _sized(small, 1, 1100)  # 1.1 MB: beyond the part limit
    response = post(small.url("/studies"), chunked(multipart([("application/dicom", too_big)])))
    assert response.status_code == 413
    assert "PACSFLOW_STOW_MAX_PART_BYTES" in response.json()["error"]
    assert small.files() == []
    four = [("application/dicom", _sized(small, n, 900)) for n in (2, 3, 4, 5)]  # 0.9 MB each
    response = post(small.url("/studies"), chunked(multipart(four)))
    assert response.status_code == 413
    error = response.json()["error"]
    assert "PACSFLOW_STOW_MAX_REQUEST_BYTES" in error and "instances before it were stored" in error
    assert 1 <= len(small.files()) <= 3
    assert not list((small.storage / ".stow").iterdir()), "no part is left behind"
    assert query(small.dsn, "SELECT 1 AS one")[0]["one"] == 1
