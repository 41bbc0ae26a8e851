"""The capabilities transaction and the zip download against real processes (`pacsflow worker` and
`web` on one database): what ``OPTIONS /dicomweb`` lists is true (every QIDO-RS key it names is
matched, every route it names answers), and a study or series comes as a zip of its stored files,
streamed."""

from __future__ import annotations

import io
import os
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage

from egress.wado.capabilities import WADL, WADL_NS
from tests.conftest import query
from tests.integration.test_wado_metadata import current
from tests.support import dicomdata
from tests.support.services import Broker, Service, wait_for
from tests.support.stack import indexed, on_a_new_database
from tests.support.zips import read_as_a_stream

pytestmark = [pytest.mark.broker]
BOUNDARY = "capabilities-test"
MB = 1024 * 1024
ZIP = "application/zip"
W = f"{{{WADL_NS}}}"
# A value each kind of match takes (``pipeline.stores.search.Match``): a kind added there without
# one here fails the key check below, as it should: its keys must be shown to work.
VALUE_OF_MATCH = {
    "uid": "1.2.3.4",
    "date": "20240101-20241231",
    "time": "100000-110000",
    "name": "Doe*",
    "text": "A*",
    "code": "CT",
    "number": "1",
    "modalities": "CT\\MR",
}
ROUTE_OF_LEVEL = {"patient": "/studies", "study": "/studies", "series": "/series", "instance": "/instances"}


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    web: Service
    run: int
    studies: dict[str, list[Dataset]] = field(default_factory=dict)
    """Name (small, big, doomed) -> the instances stored of that study."""

    def url(self, path: str) -> str:
        return f"{self.base}/dicomweb{path}"

    def uid(self, *parts: int | str) -> str:
        return dicomdata.uid(self.run, *parts)

    def stored(self, study: str) -> dict[str, Path]:
        """Entry name -> the stored file, from the index."""
        rows = query(
            self.dsn,
            "SELECT study_uid, series_uid, sop_uid, file_path FROM dicom_instance_meta WHERE study_uid = $1",
            study,
        )
        return {
            f"{r['study_uid']}/{r['series_uid']}/{r['sop_uid']}.dcm": self.storage / r["file_path"]
            for r in rows
        }


def _multipart(datasets: Iterable[Dataset]) -> bytes:
    out = io.BytesIO()
    for ds in datasets:
        part = io.BytesIO()
        ds.save_as(part, enforce_file_format=True)
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(part.getvalue() + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def _study(stack: Stack, number: int, series: list[tuple[str, int]], size: int = 16) -> list[Dataset]:
    datasets = []
    for position, (modality, count) in enumerate(series, start=1):
        for n in range(1, count + 1):
            ds = dicomdata.image(
                CTImageStorage if modality == "CT" else MRImageStorage,
                stack.uid(number),
                stack.uid(number, position),
                stack.uid(number, position, n),
                n,
                patient_id=f"P{number}",
                patient_name="Doe^Jane",
                modality=modality,
                rows=size,
                columns=size,
                accession=f"A{number}",
                study_date="20240105",
            )
            ds.SeriesNumber = position
            datasets.append(ds)
    return datasets


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("capabilities")
    web = {
        "PACSFLOW_VIEWER": "off",
        "PACSFLOW_STOW_MAX_PART_BYTES": str(16 * MB),
        "PACSFLOW_STOW_MAX_REQUEST_BYTES": str(128 * MB),
    }
    with on_a_new_database(broker.bootstrap, redis_url, tmp, scp=None, web=web) as s:
        stack = Stack(s.base, s.dsn, tmp / "storage", s.web, uuid.uuid4().int % 10**12)
        stack.studies = {
            "small": _study(stack, 1, [("CT", 3), ("MR", 2), ("CT", 1)]),
            # 10 instances of 5 MB: a zip of 50 MB.
            "big": _study(stack, 2, [("CT", 6), ("MR", 4)], size=1600),
            "doomed": _study(stack, 3, [("CT", 2)]),
        }
        for datasets in stack.studies.values():
            answer = requests.post(
                stack.url("/studies"),
                data=_multipart(datasets),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
        indexed(stack.dsn, sum(len(d) for d in stack.studies.values()))
        yield stack


def _capabilities(stack: Stack, accept: str | None = None) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    return requests.options(stack.url(""), headers=headers, timeout=10)


# --- capabilities ------------------------------------------------------------------------------


def test_options_on_the_root_answers_wadl_and_json(stack: Stack) -> None:
    answer = _capabilities(stack)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(WADL)
    application = ET.fromstring(answer.content)  # noqa: S314 (our own server's answer)
    resources = application.find(f"{W}resources")
    assert resources is not None and resources.get("base") == stack.url("/")
    paths = {r.get("path") for r in resources.iter(f"{W}resource")}
    assert {"studies", "studies/{study}", "studies/{study}/series/{series}/instances/{instance}"} <= paths
    described = _capabilities(stack, "application/dicom+json").json()
    assert {r["path"] for r in described["resources"]} == paths
    assert described["limits"]["stow_max_request_bytes"] == 128 * MB


def test_every_key_listed_is_matched_and_no_other(stack: Stack) -> None:
    described = _capabilities(stack, "application/json").json()
    assert described["queryKeys"], "no keys listed"
    for key in described["queryKeys"]:
        route = ROUTE_OF_LEVEL[key["level"]]
        value = VALUE_OF_MATCH[key["match"]]
        for name in (key["keyword"], key["tag"]):
            answer = requests.get(stack.url(route), params={name: value}, timeout=10)
            assert answer.status_code in (200, 204), (route, name, value, answer.text)
        if route != "/studies":  # a key of a lower level is refused above it: as each route lists
            answer = requests.get(stack.url("/studies"), params={key["keyword"]: value}, timeout=10)
            assert answer.status_code == 400, (key, answer.text)
    for name in ("PatientWeight", "00101030"):
        assert name not in {k["keyword"] for k in described["queryKeys"]} | {
            k["tag"] for k in described["queryKeys"]
        }
        answer = requests.get(stack.url("/studies"), params={name: "70"}, timeout=10)
        assert answer.status_code == 400, answer.text
        assert "PatientWeight" in answer.json()["error"]


def test_every_route_listed_answers_its_get(stack: Stack) -> None:
    small = stack.studies["small"]
    first = small[0]
    wait_for(lambda: current(stack.dsn, first.SeriesInstanceUID, 3), 60, "the series' metadata")
    values = {
        "study": first.StudyInstanceUID,
        "series": first.SeriesInstanceUID,
        "instance": first.SOPInstanceUID,
        "frames": "1",
        "path": "7FE00010",
    }
    described = _capabilities(stack, "application/json").json()
    checked = 0
    for resource in described["resources"]:
        unknown = set(resource["parameters"]) - set(values)
        assert not unknown, f"{resource['path']}: no value for {unknown} in this test; add one"
        path = resource["path"]
        for name in resource["parameters"]:
            path = path.replace(f"{{{name}}}", values[name])
        for method in resource["methods"]:
            if method["method"] not in ("GET", "OPTIONS"):
                continue  # POST and DELETE change what is stored: their routes are the others' paths
            answer = requests.request(method["method"], stack.url(f"/{path}" if path else ""), timeout=30)
            assert answer.status_code not in (404, 405) and answer.status_code < 500, (
                method["method"],
                path,
                answer.status_code,
                answer.text[:300],
            )
            checked += 1
    assert checked >= 20


# --- zip download ------------------------------------------------------------------------------


def _zip(stack: Stack, path: str, accept: str = ZIP) -> requests.Response:
    return requests.get(stack.url(path), headers={"Accept": accept}, timeout=60)


def test_a_study_of_several_series_is_a_zip_of_its_stored_files(stack: Stack) -> None:
    study = stack.studies["small"][0].StudyInstanceUID
    answer = _zip(stack, f"/studies/{study}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == ZIP
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{study}.zip"'
    stored = stack.stored(study)
    assert len(stored) == 6 and len({name.split("/")[1] for name in stored}) == 3
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(stored)
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert archive.read(info) == stored[info.filename].read_bytes(), info.filename
    # A series: its entries only.
    series = stack.studies["small"][3].SeriesInstanceUID
    answer = _zip(stack, f"/studies/{study}/series/{series}")
    assert answer.headers["Content-Disposition"] == f'attachment; filename="{series}.zip"'
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert sorted(archive.namelist()) == sorted(n for n in stored if f"/{series}/" in n)
        assert archive.testzip() is None


def test_a_streaming_reader_reads_every_entry_from_its_own_header(stack: Stack) -> None:
    study = stack.studies["small"][0].StudyInstanceUID
    answer = _zip(stack, f"/studies/{study}")
    assert answer.status_code == 200, answer.text
    stored = stack.stored(study)
    entries = read_as_a_stream(answer.content)
    assert sorted(entries) == sorted(stored)
    for name, data in entries.items():
        assert data == stored[name].read_bytes(), name


def test_accept_picks_the_zip_or_the_multipart_by_preference(stack: Stack) -> None:
    study = stack.studies["small"][0].StudyInstanceUID
    multipart = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    for accept, zipped in (
        (f"{multipart}, {ZIP}", False),
        (f"{multipart}; q=0.5, {ZIP}", True),
        (f"{ZIP}; q=0.4, */*; q=0.5", False),
        (f"{ZIP}, */*", True),
        ("*/*", False),
    ):
        answer = _zip(stack, f"/studies/{study}", accept)
        assert answer.status_code == 200, (accept, answer.text)
        assert answer.headers["Content-Type"].startswith(ZIP if zipped else "multipart/related"), accept


def test_an_unknown_study_or_a_missing_file_is_a_readable_404(stack: Stack) -> None:
    answer = _zip(stack, f"/studies/{stack.uid(999)}")
    assert answer.status_code == 404 and "no study" in answer.json()["error"]
    doomed = stack.studies["doomed"][0]
    stored = stack.stored(doomed.StudyInstanceUID)
    next(iter(stored.values())).unlink()
    answer = _zip(stack, f"/studies/{doomed.StudyInstanceUID}")
    assert answer.status_code == 404 and "pacsflow reconcile" in answer.json()["error"]
    assert stack.web.events("stored_file_missing")


def _streamed(stack: Stack, path: str) -> requests.Response:
    return requests.get(stack.url(path), headers={"Accept": ZIP}, stream=True, timeout=60)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_large_study_is_streamed_not_held_in_memory(stack: Stack) -> None:
    process = stack.web.process
    assert process is not None
    study = stack.studies["big"][0].StudyInstanceUID
    size = sum(p.stat().st_size for p in stack.stored(study).values())
    assert size > 48 * MB
    _zip(stack, f"/studies/{stack.studies['small'][0].StudyInstanceUID}")  # warm: code paths loaded
    before = _rss(process.pid)
    highest = before
    received = io.BytesIO()
    with requests.get(
        stack.url(f"/studies/{study}"), headers={"Accept": ZIP}, stream=True, timeout=60
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_content(256 * 1024):
            received.write(chunk)
            highest = max(highest, _rss(process.pid))
    # Held whole, the zip would add its 49 MB; streamed, the growth is the thread pool's and the
    # allocator's (13.5 MB measured), whatever the study's size.
    assert highest - before < size / 2, f"the web process grew by {(highest - before) / MB:.1f} MB"
    with zipfile.ZipFile(received) as archive:
        assert archive.testzip() is None and len(archive.namelist()) == 10


def test_a_file_that_fails_mid_stream_aborts_the_answer(stack: Stack) -> None:
    study = stack.studies["big"][0].StudyInstanceUID
    stored = stack.stored(study)
    last = stack.studies["big"][-1]
    victim = stored[f"{study}/{last.SeriesInstanceUID}/{last.SOPInstanceUID}.dcm"]
    received = io.BytesIO()
    with requests.get(
        stack.url(f"/studies/{study}"), headers={"Accept": ZIP}, stream=True, timeout=60
    ) as answer:
        assert answer.status_code == 200
        chunks = answer.iter_content(64 * 1024)
        received.write(next(chunks))
        # Every file is open by now (before the status line); the last one is 45 MB away, far beyond
        # what the sockets hold: shortening it in place fails its read when its turn comes.
        os.truncate(victim, victim.stat().st_size // 2)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in chunks:
                received.write(chunk)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(received)  # no central directory: never a complete-looking archive
    wait_for(lambda: stack.web.events("answer_aborted"), 10, "answer_aborted logged")
    (event,) = stack.web.events("answer_aborted")
    assert event["entries_sent"] == 9 and event["entries"] == 10
