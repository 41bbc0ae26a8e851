"""Conversion for the viewer, with real parts: instances stored over C-STORE (pynetdicom) in a
syntax the viewer is set not to decode are converted once by `pacsflow worker`, and `pacsflow web`
serves the converted copy where the client lets it pick the syntax, the original where it names
it; an instance that cannot be converted is a `conversion_log` record with its reason and stays
served as stored."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless

from pipeline.models import ConversionRequest
from pipeline.settings import CORNERSTONE_SYNTAXES
from tests.conftest import query
from tests.integration.test_wado_metadata import get
from tests.integration.test_wado_read import dataset_bytes_of, parts
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import store_one
from tests.support.doris import routine_load_columns
from tests.support.services import Broker, pacsflow, wait_for
from tests.support.stack import indexed, on_a_new_database

pytestmark = [pytest.mark.broker]

# What the viewer is set to decode here: Cornerstone3D's list without RLE Lossless, which pydicom
# decodes by itself, so that RLE instances are converted.
VIEWER_SYNTAXES = ",".join(s for s in CORNERSTONE_SYNTAXES if s != RLELossless)
JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"  # not on Cornerstone3D's list, and no codec for it here
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAMES = 4


@dataclass
class Stack:
    base: str
    dsn: str
    storage: Path
    bootstrap: str
    run: int
    scp_port: int
    sent: dict[str, Path] = field(default_factory=dict)

    def uid(self, *parts: int | str) -> str:
        return uid(self.run, *parts)

    def url(self, position: int, suffix: str = "") -> str:
        study, series, sop = self.uid(1), self.uid(1, position), self.uid(1, position, 1)
        return f"{self.base}/dicomweb/studies/{study}/series/{series}/instances/{sop}{suffix}"


def _instance(stack: Stack, position: int, syntax: str) -> Dataset:
    ds = dicomdata.image(
        CTImageStorage, stack.uid(1), stack.uid(1, position), stack.uid(1, position, 1), 1,
        patient_id="PCONV", rows=16, columns=16, transfer_syntax=syntax,
    )  # fmt: skip
    ds.SeriesNumber = position
    return ds


def rle(stack: Stack) -> Dataset:
    """Four frames that all differ, really RLE encoded."""
    ds = _instance(stack, 1, ExplicitVRLittleEndian)
    ds.NumberOfFrames = FRAMES
    pixels = (np.arange(16 * 16 * FRAMES, dtype=np.uint32).reshape(FRAMES, 16, 16) * 13) % 4096
    ds.compress(RLELossless, pixels.astype(np.uint16), generate_instance_uid=False)
    return ds


def corrupt_rle(stack: Stack) -> Dataset:
    """RLE whose header points beyond its segment: stored as received, never decodable."""
    ds = _instance(stack, 2, RLELossless)
    bogus = (1).to_bytes(4, "little") + (4096).to_bytes(4, "little") + bytes(56) + b"\x05\x01"
    ds.PixelData = encapsulate([bogus])
    ds["PixelData"].VR = "OB"
    return ds


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("conversion")
    syntaxes = {"PACSFLOW_VIEWER_SYNTAXES": VIEWER_SYNTAXES}
    with on_a_new_database(
        broker.bootstrap, redis_url, tmp, common=syntaxes, web={"PACSFLOW_VIEWER": "off"}
    ) as services:
        dsn = services.dsn
        run = uuid.uuid4().int % 10**12
        stack = Stack(services.base, dsn, tmp / "storage", broker.bootstrap, run, services.scp_port)
        for position, (ds, syntax) in enumerate(
            (
                (rle(stack), RLELossless),
                (corrupt_rle(stack), RLELossless),
                (_instance(stack, 3, JPEG2000_PART2), JPEG2000_PART2),
                (_instance(stack, 4, ExplicitVRLittleEndian), ExplicitVRLittleEndian),
            ),
            start=1,
        ):
            path = dicomdata.write(ds, tmp / "send" / f"{position}.dcm")
            stack.sent[ds.SOPInstanceUID] = path
            assert store_one(services.scp_port, path, syntax).Status == 0  # sent as the file is
        indexed(dsn, len(stack.sent))
        wait_for(lambda: settled(stack), 60, "every conversion recorded")
        yield stack


def conversion_rows(stack: Stack) -> dict[str, Any]:
    rows = query(
        stack.dsn,
        "SELECT sop_uid, trace_id, conversion_status, converted_syntax, conversion_error"
        " FROM dicom_instance_meta ORDER BY sop_uid",
    )
    return {row["sop_uid"]: row for row in rows}


def settled(stack: Stack) -> bool:
    rows = conversion_rows(stack)
    return [rows[stack.uid(1, p, 1)]["conversion_status"] for p in (1, 2, 3, 4)] == [1, 2, 2, None]


def log_records(broker: Broker, stack: Stack, expected: int) -> dict[str, list[dict[str, Any]]]:
    found = broker.read("conversion_log", expected, where=lambda v: v.get("sop_uid") in stack.sent)
    records: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        value = json.loads(record.value)
        assert record.key == value["study_uid"].encode()
        records.setdefault(value["sop_uid"], []).append(value)
    return records


def test_each_instance_is_converted_or_failed_once_with_a_record_of_it(stack: Stack, broker: Broker) -> None:
    rows = conversion_rows(stack)
    converted, corrupt, part2, native = (stack.uid(1, p, 1) for p in (1, 2, 3, 4))
    assert rows[converted]["converted_syntax"] == ExplicitVRLittleEndian
    assert rows[converted]["conversion_error"] is None
    assert "cannot convert from RLE Lossless" in rows[corrupt]["conversion_error"]
    assert "no codec installed here decodes JPEG 2000 Part 2" in rows[part2]["conversion_error"]
    assert rows[native]["conversion_status"] is None

    records = log_records(broker, stack, 3)
    assert sorted(records) == sorted([converted, corrupt, part2])
    [done], [failed], [no_codec] = records[converted], records[corrupt], records[part2]
    assert done["status"] == "converted" and done["reason"] is None
    assert (done["source_ts"], done["target_ts"]) == (RLELossless, ExplicitVRLittleEndian)
    assert done["trace_id"] == rows[converted]["trace_id"] and done["tenant_id"] == "default"
    assert failed["status"] == "failed" and failed["reason"] == rows[corrupt]["conversion_error"]
    assert no_codec["status"] == "failed" and "JPEG 2000 Part 2" in no_codec["reason"]
    assert list(done) == routine_load_columns("conversion_log")  # exactly the Doris job's columns


def test_frames_come_from_the_converted_copy_unless_the_stored_syntax_is_named(stack: Stack) -> None:
    sent = dcmread(stack.sent[stack.uid(1, 1, 1)])
    pixels = sent.pixel_array
    native = [pixels[n].astype("<u2").tobytes() for n in range(FRAMES)]
    stored = list(generate_frames(sent.PixelData, number_of_frames=FRAMES))
    for accept in (OHIF_FRAMES, "*/*", None):
        status, headers, body = get(stack.url(1, "/frames/3,1"), **({"Accept": accept} if accept else {}))
        assert status == 200, body[:300]
        got = parts(body, headers["content-type"])
        assert [data for _, data in got] == [native[2], native[0]]
        assert all(f"transfer-syntax={ExplicitVRLittleEndian}" in kind for kind, _ in got)
        assert ExplicitVRLittleEndian in CORNERSTONE_SYNTAXES
    for accept in (
        f"multipart/related; type=application/octet-stream; transfer-syntax={RLELossless}",
        'multipart/related; type="image/dicom-rle"',
    ):
        status, headers, body = get(stack.url(1, "/frames/3,1"), Accept=accept)
        assert status == 200, body[:300]
        got = parts(body, headers["content-type"])
        assert [data for _, data in got] == [stored[2], stored[0]]
        assert all(f"transfer-syntax={RLELossless}" in kind for kind, _ in got)


def test_the_instance_is_the_converted_copy_unless_the_stored_syntax_is_named(stack: Stack) -> None:
    sop = stack.uid(1, 1, 1)
    sent = stack.sent[sop]
    status, headers, body = get(
        stack.url(1), Accept='multipart/related; type="application/dicom"; transfer-syntax=*'
    )
    assert status == 200, body[:300]
    ((kind, data),) = parts(body, headers["content-type"])
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in kind
    copy = dcmread(io.BytesIO(data))
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and copy.SOPInstanceUID == sop
    assert np.array_equal(copy.pixel_array, dcmread(sent).pixel_array)
    status, headers, body = get(
        stack.url(1), Accept=f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}'
    )
    assert status == 200, body[:300]
    ((kind, data),) = parts(body, headers["content-type"])
    assert f"transfer-syntax={RLELossless}" in kind and dataset_bytes_of(data) == dataset_bytes(sent)
    # The series, as OHIF's or a script's retrieve asks for it: the copy, from the same request path.
    status, headers, body = get(
        f"{stack.base}/dicomweb/studies/{stack.uid(1)}/series/{stack.uid(1, 1)}",
        Accept="multipart/related; type=application/dicom; transfer-syntax=*",
    )
    ((kind, data),) = parts(body, headers["content-type"])
    assert status == 200 and dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_what_failed_to_convert_is_still_served_as_stored(stack: Stack) -> None:
    for position in (2, 3):
        sent = stack.sent[stack.uid(1, position, 1)]
        status, headers, body = get(
            stack.url(position), Accept="multipart/related; type=application/dicom; transfer-syntax=*"
        )
        assert status == 200, body[:300]
        ((_, data),) = parts(body, headers["content-type"])
        assert dataset_bytes_of(data) == dataset_bytes(sent)
        status, headers, body = get(stack.url(position, "/frames/1"), Accept=OHIF_FRAMES)
        assert status == 200, body[:300]
        ((kind, frame),) = parts(body, headers["content-type"])
        stored = dcmread(sent)
        assert frame == next(generate_frames(stored.PixelData, number_of_frames=1))
        assert f"transfer-syntax={stored.file_meta.TransferSyntaxUID}" in kind


def publish(bootstrap: str, requests: list[ConversionRequest]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for request in requests:
                await producer.send_and_wait(
                    "conversion_queue", request.dumps(), key=request.study_uid.encode()
                )
        finally:
            await producer.stop()

    asyncio.run(send())


def test_a_request_delivered_again_or_for_a_replaced_or_deleted_instance_is_skipped(
    stack: Stack, broker: Broker
) -> None:
    sop = stack.uid(1, 1, 1)
    row = conversion_rows(stack)[sop]
    copy = (stack.storage / "default" / stack.uid(1) / stack.uid(1, 1) / f"{sop}.converted").stat()
    again = ConversionRequest(
        tenant_id="default",
        study_uid=stack.uid(1),
        series_uid=stack.uid(1, 1),
        sop_uid=sop,
        file_path=f"default/{stack.uid(1)}/{stack.uid(1, 1)}/{sop}.dcm",
        source_ts=RLELossless,
        target_ts=ExplicitVRLittleEndian,
        trace_id=row["trace_id"],
    )
    stale = ConversionRequest(**{**_fields(again), "trace_id": str(uuid.uuid4())})
    gone_sop = stack.uid(1, 1, 99)
    gone = ConversionRequest(
        **{**_fields(again), "sop_uid": gone_sop, "file_path": again.file_path.replace(sop, gone_sop)}
    )
    publish(stack.bootstrap, [again, stale, gone])

    def skipped(value: dict[str, Any]) -> bool:
        return value.get("status") == "skipped" and value.get("sop_uid") in (sop, gone_sop)

    reasons = sorted(json.loads(r.value)["reason"] for r in broker.read("conversion_log", 3, where=skipped))
    assert len(reasons) == 3, reasons
    assert "already converted" in reasons
    assert any("stored again" in r for r in reasons) and any("no longer in the index" in r for r in reasons)
    # Converted once: the copy was not written again, and the row is as it was.
    after = (stack.storage / "default" / stack.uid(1) / stack.uid(1, 1) / f"{sop}.converted").stat()
    assert (after.st_mtime_ns, after.st_ino) == (copy.st_mtime_ns, copy.st_ino)
    assert conversion_rows(stack)[sop]["conversion_status"] == 1
    converted = broker.read("conversion_log", 1, where=lambda v: v.get("sop_uid") == sop and v["status"] == "converted")  # fmt: skip  # noqa: E501
    assert len(converted) == 1


def _fields(request: ConversionRequest) -> dict[str, str]:
    return {name: getattr(request, name) for name in request.__struct_fields__}


def test_status_counts_pending_and_failed_conversions(stack: Stack, tmp_path: Path) -> None:
    status = pacsflow(
        "status",
        env={
            "PACSFLOW_KAFKA_BOOTSTRAP": stack.bootstrap,
            "PACSFLOW_DATABASE_URL": stack.dsn,
            "PACSFLOW_DATA_DIR": str(tmp_path),
        },
    )
    assert status.returncode == 0, status.stderr
    assert "conversions: 0 pending, 2 failed" in status.stdout, status.stdout


def test_an_instance_stored_again_in_a_syntax_the_viewer_decodes_loses_its_converted_copy(
    stack: Stack, tmp_path: Path
) -> None:
    first = _instance(stack, 5, ExplicitVRLittleEndian)
    first.compress(RLELossless, generate_instance_uid=False)
    sop = first.SOPInstanceUID
    copy = stack.storage / "default" / stack.uid(1) / stack.uid(1, 5) / f"{sop}.converted"
    path = dicomdata.write(first, tmp_path / "rle.dcm")
    assert store_one(stack.scp_port, path, RLELossless).Status == 0
    wait_for(lambda: conversion_rows(stack).get(sop, {}).get("conversion_status") == 1, 60, "its conversion")
    assert copy.is_file()
    trace = conversion_rows(stack)[sop]["trace_id"]

    again = dicomdata.write(_instance(stack, 5, ExplicitVRLittleEndian), tmp_path / "plain.dcm")
    assert store_one(stack.scp_port, again, ExplicitVRLittleEndian).Status == 0
    wait_for(lambda: conversion_rows(stack)[sop]["trace_id"] != trace, 60, "the new store indexed")
    assert conversion_rows(stack)[sop]["conversion_status"] is None
    assert not copy.exists()
    status, headers, body = get(stack.url(5, "/frames/1"), Accept=OHIF_FRAMES)
    assert status == 200, body[:300]
    ((kind, _),) = parts(body, headers["content-type"])
    assert f"transfer-syntax={ExplicitVRLittleEndian}" in kind  # the file as now stored
