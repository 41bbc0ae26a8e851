"""``InstanceReceiver.receive_file``: a STOW-RS part, already on disk, through the C-STORE's checks.

The posted file is kept as it is where its File Meta Information is sound (renamed, not copied),
its meta re-encoded only where it must be; the dataset's bytes are stored as they came either way.
Failures raise the errors a C-STORE gets, which map to the same statuses.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from pipeline import errors
from pipeline.dicomfile import encode_file_meta, read_header
from pipeline.ingest import InstanceReceiver, Source, StoreStatus, status_for
from pipeline.models import TenantId, Uid
from pipeline.outbox import Outbox
from pipeline.stores.files import StorageLayout
from tests.support import dicomdata

SOURCE = Source(TenantId("default"), "STOW-RS", "127.0.0.1", "trace-1")
STUDY = dicomdata.uid(7, 1)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open_slot(tmp_path / "outbox", "web")
    yield box
    box.close()


@pytest.fixture
def receiver(tmp_path: Path, outbox: Outbox) -> InstanceReceiver:
    return InstanceReceiver(StorageLayout(tmp_path / "storage"), outbox, "node-1")


def instance(n: int = 1, **kwargs: object) -> Dataset:
    return dicomdata.ct_series(STUDY, dicomdata.uid(7, 1, 1), n, **kwargs)[n - 1]


def posted(tmp_path: Path, ds: Dataset, name: str = "part.tmp") -> Path:
    """A part as STOW-RS spools it: under the storage root, on its filesystem."""
    incoming = tmp_path / "storage" / ".stow"
    incoming.mkdir(parents=True, exist_ok=True)
    return dicomdata.write(ds, incoming / name)


def stored_path(tmp_path: Path, ds: Dataset) -> Path:
    study, series, sop = (str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    return tmp_path / "storage" / "default" / study / series / f"{sop}.dcm"


def test_a_sound_file_is_renamed_into_place_with_its_events_spooled(
    tmp_path: Path, receiver: InstanceReceiver, outbox: Outbox
) -> None:
    ds = instance()
    temp = posted(tmp_path, ds)
    sent, inode = temp.read_bytes(), temp.stat().st_ino
    stored = receiver.receive_file(temp, SOURCE, expected_study=Uid(STUDY))
    path = stored_path(tmp_path, ds)
    assert path.read_bytes() == sent and path.stat().st_ino == inode, "kept as posted: a rename, no copy"
    assert not temp.exists()
    assert stored.file_size == len(sent) and stored.transfer_syntax == ExplicitVRLittleEndian
    assert [m.topic for _, m in outbox.peek(10)] == ["storage_queue", "log_queue"]
    assert b'"SourceAE":"STOW-RS"' in outbox.peek(1)[0][1].value


def test_a_resent_instance_replaces_its_file(tmp_path: Path, receiver: InstanceReceiver) -> None:
    ds = instance()
    receiver.receive_file(posted(tmp_path, ds), SOURCE)
    ds.PatientName = "Doe^Changed"
    receiver.receive_file(posted(tmp_path, ds, "again.tmp"), SOURCE)
    assert str(dcmread(stored_path(tmp_path, ds)).PatientName) == "Doe^Changed"


def test_a_meta_without_what_part_10_requires_is_reencoded_and_the_dataset_kept(
    tmp_path: Path, receiver: InstanceReceiver
) -> None:
    ds = instance()
    whole = dicomdata.encode(ds)
    dataset = whole[dicomdata.dataset_offset(whole) :]
    del ds.file_meta.MediaStorageSOPInstanceUID  # and, written as is, no group length either
    temp = dicomdata.write(ds, tmp_path / "storage" / ".stow" / "x.tmp", as_is=True)
    assert temp.read_bytes().endswith(dataset)
    receiver.receive_file(temp, SOURCE)
    path = stored_path(tmp_path, ds)
    meta = dcmread(path).file_meta
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and meta.ImplementationClassUID
    assert dicomdata.dataset_bytes(path) == dataset
    assert not temp.exists()


def test_a_wrong_group_length_is_reencoded(tmp_path: Path, receiver: InstanceReceiver) -> None:
    ds = instance()
    temp = posted(tmp_path, ds)
    data = bytearray(temp.read_bytes())
    dataset = bytes(data[dicomdata.dataset_offset(bytes(data)) :])
    data[140:144] = (int.from_bytes(data[140:144], "little") + 2).to_bytes(4, "little")
    temp.write_bytes(bytes(data))
    receiver.receive_file(temp, SOURCE)
    assert dicomdata.dataset_bytes(stored_path(tmp_path, ds)) == dataset


@pytest.mark.parametrize(
    ("content", "error", "status"),
    [
        (b"plain text, not DICOM", errors.UnreadableDataset, StoreStatus.CANNOT_UNDERSTAND),
        (
            b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI",
            errors.UnreadableDataset,
            StoreStatus.CANNOT_UNDERSTAND,
        ),
    ],
)
def test_what_is_not_a_part_10_file_is_refused(
    tmp_path: Path, receiver: InstanceReceiver, content: bytes, error: type[Exception], status: StoreStatus
) -> None:
    temp = tmp_path / "storage" / ".stow" / "x.tmp"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(content)
    with pytest.raises(error) as raised:
        receiver.receive_file(temp, SOURCE)
    assert isinstance(raised.value, errors.PacsflowError) and status_for(raised.value) == status
    assert temp.exists(), "the caller removes a refused part"
    assert not (tmp_path / "storage" / "default").exists()


def test_a_truncated_file_is_refused(tmp_path: Path, receiver: InstanceReceiver) -> None:
    temp = posted(tmp_path, instance())
    temp.write_bytes(temp.read_bytes()[:-100])
    with pytest.raises(errors.UnreadableDataset, match="truncated"):
        receiver.receive_file(temp, SOURCE)


def test_an_instance_of_another_study_is_refused_with_0xC122(
    tmp_path: Path, receiver: InstanceReceiver
) -> None:
    temp = posted(tmp_path, instance())
    with pytest.raises(errors.StudyMismatch, match="is not the study") as raised:
        receiver.receive_file(temp, SOURCE, expected_study=Uid(dicomdata.uid(7, 2)))
    assert status_for(raised.value) == StoreStatus.STUDY_MISMATCH
    assert int(StoreStatus.STUDY_MISMATCH) == 0xC122


def test_a_meta_announcing_another_sop_class_is_refused_with_0xA900(
    tmp_path: Path, receiver: InstanceReceiver
) -> None:
    ds = instance()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    temp = dicomdata.write(ds, tmp_path / "storage" / ".stow" / "x.tmp", as_is=True)
    with pytest.raises(errors.SopClassMismatch) as raised:
        receiver.receive_file(temp, SOURCE)
    assert status_for(raised.value) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS) == 0xA900
    assert ds.SOPClassUID == CTImageStorage


def test_c_store_and_stow_store_the_same_file(tmp_path: Path, receiver: InstanceReceiver) -> None:
    ds = instance()
    temp = posted(tmp_path, ds)
    posted_bytes = temp.read_bytes()
    receiver.receive_file(temp, SOURCE)
    by_stow = stored_path(tmp_path, ds).read_bytes()
    offset = dicomdata.dataset_offset(posted_bytes)
    receiver.receive(ds.file_meta, posted_bytes[offset:], SOURCE)
    by_c_store = stored_path(tmp_path, ds).read_bytes()
    assert by_stow[offset:] == by_c_store[dicomdata.dataset_offset(by_c_store) :] == posted_bytes[offset:]
    assert by_c_store[: dicomdata.dataset_offset(by_c_store)] == encode_file_meta(ds.file_meta)


def test_a_deflated_file_is_read_from_disk(tmp_path: Path, receiver: InstanceReceiver) -> None:
    ds = instance(transfer_syntax=DeflatedExplicitVRLittleEndian)
    stored = receiver.receive_file(posted(tmp_path, ds), SOURCE)
    assert stored.location.sop == ds.SOPInstanceUID


def test_the_header_of_a_large_file_is_read_without_its_pixels(tmp_path: Path) -> None:
    ds = instance(rows=2048, columns=2048, frames=6)  # 48 MiB of pixel data
    path = dicomdata.write(ds, tmp_path / "large.dcm")
    data = path.read_bytes()
    offset = dicomdata.dataset_offset(data)
    del data, ds
    with path.open("rb") as fp:
        fp.seek(offset)
        tracemalloc.start()
        header = read_header(fp, ExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert header.number_of_frames == 6
    assert peak < 2 * 1024 * 1024, f"reading the header took {peak} bytes"


def test_bytes_and_a_stream_read_alike() -> None:
    data = dicomdata.encode(instance())
    dataset = data[dicomdata.dataset_offset(data) :]
    assert read_header(dataset, ExplicitVRLittleEndian) == read_header(
        io.BytesIO(dataset), ExplicitVRLittleEndian
    )


def test_a_file_without_preamble_gets_one(tmp_path: Path, receiver: InstanceReceiver) -> None:
    """What dicomweb-client posts of a dataset made in memory: pydicom writes it with no preamble."""
    ds = instance()
    temp = tmp_path / "storage" / ".stow" / "x.tmp"
    temp.parent.mkdir(parents=True)
    pydicom.dcmwrite(temp, ds)
    assert temp.read_bytes()[:2] == b"\x02\x00"
    whole = dicomdata.encode(ds)
    receiver.receive_file(temp, SOURCE)
    assert stored_path(tmp_path, ds).read_bytes()[:132] == b"\0" * 128 + b"DICM"
    assert dicomdata.dataset_bytes(stored_path(tmp_path, ds)) == whole[dicomdata.dataset_offset(whole) :]
