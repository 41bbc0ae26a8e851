"""Converted copies: the same instance and pixels in another syntax, written beside the original
and indexed by frame; an instance that cannot be converted fails clearly and keeps its original."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from msgspec.structs import replace
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from pipeline import frames
from pipeline.conversion import ConversionFailed, convert, decodable, reencode
from pipeline.errors import StorageUnavailable
from pipeline.models import ConversionRequest
from pipeline.settings import load
from pipeline.status import HoldNote, held_lines
from pipeline.stores.files import StorageLayout
from tests.support import dicomdata
from tests.support.dicomdata import uid

JPEG2000_PART2 = "1.2.840.10008.1.2.4.92"  # no codec for it here: what a failure looks like
FRAMES = 3


def multiframe(syntax: str, number: int = 1) -> Dataset:
    ds = dicomdata.image(CTImageStorage, uid(1), uid(1, 1), uid(1, 1, number), number, rows=16, columns=16)
    ds.NumberOfFrames = FRAMES
    pixels = (np.arange(16 * 16 * FRAMES, dtype=np.uint32).reshape(FRAMES, 16, 16) * 11 + number) % 4096
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype("<u2").tobytes()
    else:
        ds.compress(syntax, pixels.astype(np.uint16), generate_instance_uid=False)
    return ds


def stored(layout: StorageLayout, ds: Dataset, syntax: str | None = None) -> ConversionRequest:
    """``ds`` written where it would be stored; the request the index would make for it."""
    relative = f"default/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    dicomdata.write(ds, layout.root / relative, as_is=True)
    return ConversionRequest(
        tenant_id="default",
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        file_path=relative,
        source_ts=syntax or ds.file_meta.TransferSyntaxUID,
        target_ts=ExplicitVRLittleEndian,
        trace_id="trace-1",
    )


def test_reencode_keeps_every_uid_and_the_pixels(tmp_path: Path) -> None:
    original = multiframe(RLELossless)
    path = dicomdata.write(original, tmp_path / "rle.dcm", as_is=True)
    for target in (ExplicitVRLittleEndian, JPEGLSLossless):
        again = dcmread(io.BytesIO(reencode(path, target)))
        assert again.file_meta.TransferSyntaxUID == target
        assert again.SOPInstanceUID == original.SOPInstanceUID
        assert again.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert again.StudyInstanceUID == original.StudyInstanceUID
        assert np.array_equal(again.pixel_array, dcmread(path).pixel_array)


def test_a_converted_copy_is_written_beside_the_original_and_its_frames_are_indexed(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path / "storage")
    request = stored(layout, multiframe(RLELossless))
    original = layout.root / request.file_path
    before = original.read_bytes()

    copy = convert(layout, request)

    assert copy.path == original.with_suffix(".converted") and copy.path.is_file()
    assert copy.syntax == ExplicitVRLittleEndian and copy.size == copy.path.stat().st_size
    assert original.read_bytes() == before
    assert copy.frame_index is not None and frames.frame_count(copy.frame_index) == FRAMES
    expected = dcmread(original).pixel_array
    got = frames.read_frames(copy.path, copy.frame_index, [3, 1])
    assert got == [expected[2].astype("<u2").tobytes(), expected[0].astype("<u2").tobytes()]
    assert not [p for p in copy.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_converting_again_gives_the_same_copy(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path / "storage")
    request = stored(layout, multiframe(RLELossless))
    first = convert(layout, request).path.read_bytes()
    assert convert(layout, request).path.read_bytes() == first


def corrupt_rle() -> Dataset:
    ds = multiframe(ExplicitVRLittleEndian, number=2)
    ds.file_meta.TransferSyntaxUID = RLELossless
    # An RLE header that promises one segment at an offset beyond the fragment.
    bogus = (1).to_bytes(4, "little") + (4096).to_bytes(4, "little") + bytes(56) + b"\x05\x01"
    ds.PixelData = encapsulate([bogus] * FRAMES)
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (corrupt_rle, "cannot convert from RLE Lossless (1.2.840.10008.1.2.5) to Explicit VR Little Endian"),
        (
            lambda: dicomdata.image(
                CTImageStorage, uid(2), uid(2, 1), uid(2, 1, 1), 1, transfer_syntax=JPEG2000_PART2
            ),
            "no codec installed here decodes JPEG 2000 Part 2",
        ),
    ],
)
def test_an_instance_that_cannot_be_converted_fails_and_keeps_its_original(
    tmp_path: Path, make: object, reason: str
) -> None:
    layout = StorageLayout(tmp_path / "storage")
    request = stored(layout, make())  # type: ignore[operator]
    original = layout.root / request.file_path
    before = original.read_bytes()
    with pytest.raises(ConversionFailed, match=reason.replace("(", r"\(").replace(")", r"\)")):
        convert(layout, request)
    assert original.read_bytes() == before
    assert sorted(p.name for p in original.parent.iterdir()) == [original.name]


def test_requests_that_name_no_stored_instance_fail_and_an_absent_storage_waits(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path / "storage")
    request = stored(layout, multiframe(RLELossless))
    with pytest.raises(ConversionFailed, match="is not where the request's UIDs say"):
        convert(layout, replace(request, file_path="default/1/2/3.dcm"))
    with pytest.raises(ConversionFailed, match="the request names no valid instance"):
        convert(layout, replace(request, sop_uid="../../etc"))
    (layout.root / request.file_path).unlink()
    with pytest.raises(ConversionFailed, match="the file is missing"):
        convert(layout, request)
    # An unmounted volume is not a folder of missing files: the agent waits for it.
    with pytest.raises(StorageUnavailable, match="not readable"):
        convert(StorageLayout(tmp_path / "not-mounted"), request)


def test_what_is_decodable_here() -> None:
    assert decodable(ExplicitVRLittleEndian) and decodable(RLELossless) and decodable(JPEGLSLossless)
    assert not decodable(JPEG2000_PART2)
    assert not decodable("1.2.840.10008.1.2.4.110")  # JPEG XL: no pydicom plugin yet


def test_each_held_stream_has_its_own_note(tmp_path: Path) -> None:
    settings = load({"PACSFLOW_DATA_DIR": str(tmp_path), "PACSFLOW_NODE_ID": "worker-1"})
    index, conversion = HoldNote(settings), HoldNote(settings, "conversion")
    index.held("broker", OSError("refused"))
    conversion.held("database", OSError("refused"))
    assert sorted(line.split(" since ")[0] for line in held_lines(settings)) == [
        "conversion held on worker-1",
        "index held on worker-1",
    ]
    conversion.flowing()
    assert [line.split(" since ")[0] for line in held_lines(settings)] == ["index held on worker-1"]


def test_until_done_retries_what_fails_and_notes_the_hold_meanwhile(tmp_path: Path) -> None:
    settings = load({"PACSFLOW_DATA_DIR": str(tmp_path), "PACSFLOW_NODE_ID": "worker-1"})
    note = HoldNote(settings, "conversion")
    seen: list[list[str]] = []

    async def flaky() -> str:
        seen.append(held_lines(settings))
        if len(seen) < 3:
            raise OSError("connection refused")
        return "done"

    assert asyncio.run(note.until_done("database", flaky)) == "done"
    assert seen[0] == [] and "conversion held on worker-1" in seen[2][0]
    assert "waiting for database" in seen[2][0] and held_lines(settings) == []
