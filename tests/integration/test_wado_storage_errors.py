"""WADO-RS over a storage root that disagrees with the index, against a real `pacsflow web`.

Instances go in through the SCP and the worker (real broker, real PostgreSQL); then a file is
broken under the storage root the way it happens to a user:

- removed by hand: a 404 naming the instance and `pacsflow reconcile`, never the database's 503;
- not readable: a symlink loop (``ELOOP`` at open) stands for any error but "not there", and a
  link to ``/proc/self/mem`` gives a real ``EIO`` at the first read (the kernel's answer for an
  unmapped address; a failing disk answers the same). Tests run as root, so a permission can
  not be taken away;
- a storage root that is not there (a web host without the volume mounted);
- a file that fails after a multipart answer has started: the connection breaks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from pipeline.stores.postgres import migrate
from tests.conftest import scratch_database
from tests.integration.test_wado_metadata import current, get
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, Service, wait_for
from tests.support.stack import indexed, running

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]
STUDIES = ("missing", "loop", "eio", "fine")


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    web: Service
    tmp: Path
    run: int

    def study(self, name: str) -> str:
        return uid(self.run, STUDIES.index(name) + 1)

    def series(self, name: str) -> str:
        return uid(self.run, STUDIES.index(name) + 1, 1)

    def sop(self, name: str, n: int) -> str:
        return f"{self.series(name)}.{n}"

    def file(self, name: str, n: int) -> Path:
        return self.storage / "default" / self.study(name) / self.series(name) / f"{self.sop(name, n)}.dcm"

    def urls(self, name: str, n: int, base: str | None = None) -> dict[str, str]:
        """Every route that reads instance ``n``'s file, by what it is."""
        study = f"{base or self.base}/dicomweb/studies/{self.study(name)}"
        series = f"{study}/series/{self.series(name)}"
        instance = f"{series}/instances/{self.sop(name, n)}"
        return {
            "study": study,
            "series": series,
            "instance": instance,
            "frames": f"{instance}/frames/1",
            "rendered": f"{instance}/rendered",
            "frame rendered": f"{instance}/frames/1/rendered",
            "thumbnail": f"{instance}/thumbnail",
            "pixel bulk data": f"{instance}/bulkdata/7FE00010",
            "other bulk data": f"{instance}/bulkdata/00291010",
        }


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("wado-storage")
    with scratch_database() as dsn:
        asyncio.run(migrate(dsn))
        with running(broker.bootstrap, redis_url, tmp, dsn) as services:
            run = uuid.uuid4().int % 10**12
            datasets = []
            for number in range(1, len(STUDIES) + 1):
                datasets += dicomdata.ct_series(uid(run, number), uid(run, number, 1), 3, rows=16, columns=16)
            files = dicomdata.write_all(datasets, tmp / "send")
            result = storescu(services.scp_port, files)
            assert result.returncode == 0, result.stderr
            indexed(dsn, len(files))
            yield Stack(services.base, dsn, tmp / "storage", services.web, tmp, run)


def error_of(body: bytes) -> str:
    answer = json.loads(body)
    assert isinstance(answer["error"], str)
    return answer["error"]


def test_a_file_removed_by_hand_is_a_404_naming_the_instance_and_reconcile(stack: Stack) -> None:
    stack.file("missing", 2).unlink()
    sop = stack.sop("missing", 2)
    for what, url in stack.urls("missing", 2).items():
        status, headers, body = get(url)
        # Never a 200 whose multipart body lacks the instance, nor the database's 503.
        assert status == 404, (what, status, body[:300])
        assert headers["content-type"].startswith("application/json"), what
        error = error_of(body)
        assert sop in error and "pacsflow reconcile" in error, (what, error)
    # An inconsistency between index and storage is logged as one, with where it is.
    logged = stack.web.events("stored_file_missing")
    assert logged, stack.web.log_path.read_text()[-3000:]
    assert {(e["tenant"], e["study"], e["series"], e["sop"]) for e in logged} == {
        ("default", stack.study("missing"), stack.series("missing"), sop)
    }
    assert not stack.web.events("index_unavailable")
    # The other instances of the series are still served.
    status, _, _ = get(stack.urls("missing", 1)["instance"])
    assert status == 200


def test_a_file_that_cannot_be_opened_is_a_503_naming_the_storage(stack: Stack) -> None:
    path = stack.file("loop", 2)
    path.unlink()
    path.symlink_to(path.name)  # ELOOP: it exists, and cannot be opened
    for what, url in stack.urls("loop", 2).items():
        status, _, body = get(url)
        assert status == 503, (what, status, body[:300])
        error = error_of(body)
        assert "storage is not readable" in error and stack.sop("loop", 2) in error, (what, error)
        assert "database" not in error, (what, error)
    assert stack.web.events("storage_unreadable")
    # The series' regenerated metadata file likewise.
    series = stack.series("loop")
    wait_for(lambda: current(stack.dsn, series, 3), 30, "the series metadata file")
    metadata = stack.storage / "default" / "metadata" / stack.study("loop") / f"{series}.json"
    metadata.unlink()
    metadata.symlink_to(metadata.name)
    status, _, body = get(f"{stack.base}/dicomweb/studies/{stack.study('loop')}/series/{series}/metadata")
    assert status == 503, body[:300]
    assert "storage is not readable" in error_of(body) and metadata.name in error_of(body)


def test_a_read_error_is_a_503_before_the_answer_and_a_broken_transfer_after(stack: Stack) -> None:
    path = stack.file("eio", 2)
    path.unlink()
    path.symlink_to("/proc/self/mem")  # opens; its first read fails with EIO
    urls = stack.urls("eio", 2)
    # Answers read whole before their first byte: a 503.
    for what in ("frames", "rendered", "frame rendered", "thumbnail", "pixel bulk data", "other bulk data"):
        status, _, body = get(urls[what])
        assert status == 503, (what, status, body[:300])
        assert "storage is not readable" in error_of(body), what

    # Streamed answers: instance 1 is on the wire when instance 2 fails. The client must see a
    # broken transfer, not a clean multipart body it would take as the whole series.
    async def fetch(url: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.read()

    for what in ("study", "series", "instance"):
        with pytest.raises(aiohttp.ClientPayloadError):
            status, body = asyncio.run(fetch(urls[what]))
            pytest.fail(f"{what}: a whole answer of {status}, {len(body)} bytes")
    assert len(stack.web.events("answer_aborted")) == 3
    # Only those connections broke: the next request is answered.
    status, _, _ = get(stack.urls("eio", 1)["instance"])
    assert status == 200


def test_a_storage_root_that_is_not_there_is_a_503_naming_it(
    stack: Stack, broker: Broker, redis_url: str
) -> None:
    absent = stack.tmp / "not-mounted"
    # A web host of its own: the module's reads the storage root that is there.
    with running(
        broker.bootstrap,
        redis_url,
        stack.tmp / "unmounted",
        stack.dsn,
        scp=None,
        worker=None,
        web={"PACSFLOW_STORAGE_ROOT": str(absent)},
    ) as unmounted:
        for what, url in stack.urls("fine", 1, unmounted.base).items():
            status, _, body = get(url)
            assert status == 503, (what, status, body[:300])
            error = error_of(body)
            assert "storage is not readable" in error and str(absent) in error, (what, error)
        assert not unmounted.web.events("stored_file_missing")
    assert not absent.exists()
