"""Bad input gets a failure status with an ErrorComment; nothing partial is left; the SCP serves on."""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, build_context

from tests.conftest import Scp, ScpFactory
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import c_echo, store_one
from tests.support.services import Broker, require

pytestmark = pytest.mark.broker


def fresh(run: int | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    run = run or uuid.uuid4().int % 10**12
    return dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1, **kwargs)[0]


def assert_nothing_written(scp: Scp) -> None:
    leftovers = [p for p in scp.storage_root.rglob("*") if p.is_file()] if scp.storage_root.exists() else []
    assert leftovers == [], f"files were written for a rejected instance: {leftovers}"


def assert_still_serving(scp: Scp) -> None:
    assert c_echo(scp.port)
    good = fresh()
    assert store_one(scp.port, good, ExplicitVRLittleEndian).Status == 0x0000
    path = (
        scp.storage_root
        / "default"
        / good.StudyInstanceUID
        / good.SeriesInstanceUID
        / f"{good.SOPInstanceUID}.dcm"
    )
    assert path.is_file()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "1.2.abc.3"),
        ("StudyInstanceUID", "../../../../../tmp/pacsflow-escape"),
        ("SeriesInstanceUID", "1.2/../../3"),
        ("StudyInstanceUID", "1." + "2" * 63),  # 65 characters
        ("SOPInstanceUID", "../../evil"),
    ],
)
def test_invalid_and_path_traversal_uids_are_refused(
    scp: Scp, tmp_path: Path, attribute: str, value: str
) -> None:
    ds = fresh()
    with dicomdata.lenient_writing():
        delattr(ds, attribute)  # a new element takes the lenient validation mode
        setattr(ds, attribute, value)
        path = dicomdata.write(ds, tmp_path / "bad.dcm", as_is=True)
        status = store_one(scp.port, path, ExplicitVRLittleEndian)
    assert status.Status == 0xC002
    assert "not a valid UID" in status.ErrorComment
    assert_nothing_written(scp)
    assert not Path("/tmp/pacsflow-escape").exists()
    assert_still_serving(scp)


def with_raw_uid(ds: Dataset, attribute: str, raw: bytes, path: Path) -> Path:
    """``ds`` written with ``raw`` as the bytes of a UID: pydicom strips whitespace from any UID it
    is given, so a placeholder of the same length is written and then overwritten."""
    placeholder = b"9" * len(raw)
    setattr(ds, attribute, placeholder.decode())
    data = dicomdata.encode(ds)
    start = dicomdata.dataset_offset(data)  # the file meta may announce the placeholder too
    meta, dataset = data[:start], data[start:]
    element = b"UI" + struct.pack("<H", len(raw) + len(raw) % 2) + placeholder
    assert dataset.count(element) == 1, "the placeholder is not one element's value"
    path.write_bytes(meta + dataset.replace(element, element[: -len(raw)] + raw))
    return path


@pytest.mark.parametrize(
    ("attribute", "raw"),
    [
        # Only a trailing NUL or space is padding: any other character is part of the value.
        ("StudyInstanceUID", b"1.2.3\n"),
        ("StudyInstanceUID", b"1.2.3\r\n"),
        ("StudyInstanceUID", b"1.2.3\t"),
        ("StudyInstanceUID", b"\n1.2.3"),
        ("StudyInstanceUID", b"1.2.3\n\x00"),
        ("SeriesInstanceUID", b"1.2.3\x0b"),
        ("SeriesInstanceUID", b"1.2\x003"),
        ("SeriesInstanceUID", b"1.2.3\x7f"),
        ("SeriesInstanceUID", "1.2.\u0661".encode()),  # a digit to str.isdigit(), not to DICOM
        ("SOPInstanceUID", b"1.2.3\n"),
    ],
)
def test_uids_with_control_characters_are_refused(
    scp: Scp, tmp_path: Path, attribute: str, raw: bytes
) -> None:
    path = with_raw_uid(fresh(), attribute, raw, tmp_path / "control.dcm")
    status = store_one(scp.port, path, ExplicitVRLittleEndian)
    assert status.Status == 0xC002, status
    assert f"{attribute} is not a valid UID" in status.ErrorComment
    assert_nothing_written(scp)
    assert_still_serving(scp)


def test_missing_sop_instance_uid_is_refused(scp: Scp, tmp_path: Path) -> None:
    ds = fresh()
    del ds.SOPInstanceUID  # the file meta still announces one, as a careless sender would
    path = dicomdata.write(ds, tmp_path / "nosop.dcm", as_is=True)
    status = store_one(scp.port, path, ExplicitVRLittleEndian)
    assert status.Status == 0xC001
    assert "SOPInstanceUID is missing" in status.ErrorComment
    assert_nothing_written(scp)
    assert_still_serving(scp)


def test_unknown_sop_class_context_is_rejected_at_negotiation(scp: Scp) -> None:
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [
        build_context("1.2.3.4.5.6.7.8.9", [ExplicitVRLittleEndian]),
        build_context(CTImageStorage, [ExplicitVRLittleEndian]),
    ]
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert rejected == {"1.2.3.4.5.6.7.8.9"}
    assert accepted == {CTImageStorage}
    assert_still_serving(scp)


def test_dataset_of_another_sop_class_than_negotiated_is_refused(scp: Scp, tmp_path: Path) -> None:
    ds = fresh()
    ds.SOPClassUID = "1.2.3.4.5.6.7.8.9"  # the meta (and so the context) still says CT
    path = dicomdata.write(ds, tmp_path / "other.dcm", as_is=True)
    status = store_one(scp.port, path, ExplicitVRLittleEndian)
    assert status.Status == 0xA900
    assert "differs from the negotiated" in status.ErrorComment
    assert_nothing_written(scp)
    assert_still_serving(scp)


@pytest.mark.parametrize(
    ("syntax", "cut"),
    [
        (ExplicitVRLittleEndian, 100),
        (ExplicitVRLittleEndian, 5000),
        (JPEGBaseline8Bit, 9),
        (JPEGBaseline8Bit, 3000),
    ],
)
def test_truncated_dataset_is_refused(scp: Scp, tmp_path: Path, syntax: str, cut: int) -> None:
    ds = fresh(transfer_syntax=syntax)
    whole = dicomdata.encode(ds)
    path = tmp_path / "truncated.dcm"
    path.write_bytes(whole[:-cut])
    status = store_one(scp.port, path, syntax)
    assert status.Status == 0xC000
    assert "truncated" in status.ErrorComment or "malformed" in status.ErrorComment
    assert_nothing_written(scp)
    assert_still_serving(scp)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    require(os.geteuid() == 0, "root, to mount a 1 MiB tmpfs for the disk-full test")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(result.returncode == 0, f"mount -t tmpfs (said: {result.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.tmpfs
def test_disk_full_gets_out_of_resources_and_leaves_nothing(
    start_scp: ScpFactory, broker: Broker, tiny_tmpfs: Path
) -> None:
    scp = start_scp(broker.bootstrap, storage_root=str(tiny_tmpfs))
    big = fresh(rows=1024, columns=1024)  # 2 MiB of pixels: cannot fit in 1 MiB
    status = store_one(scp.port, big, ExplicitVRLittleEndian)
    assert status.Status == 0xA700
    assert "no space left" in status.ErrorComment
    assert_nothing_written(scp)
    assert_still_serving(scp)  # the small instance fits once the failed one is cleaned up
