"""Frame indexes: frames read through an index are pydicom's frames, and only their bytes are read."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, fragment_frame, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from pipeline import metadata
from pipeline.errors import UnreadableDataset
from pipeline.frames import (
    FrameNotFound,
    file_frame_index,
    frame_count,
    frame_index,
    frame_spans,
    read_frames,
    read_frames_parsing,
)
from tests.support import dicomdata

DEFER_SIZE = metadata.deferred_size(1024)  # 768, as the indexer reads files
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def image(
    frames: int,
    rows: int = 16,
    columns: int = 16,
    *,
    bits: int = 16,
    samples: int = 1,
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> tuple[Dataset, np.ndarray]:
    """A dataset with native pixel data of random (so every frame's bytes are unique) values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(dicomdata.uid(7, seed, frames))
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    shape = (frames, rows, columns, samples) if samples > 1 else (frames, rows, columns)
    dtype = np.uint16 if bits == 16 else np.uint8
    arr = np.random.default_rng(seed).integers(0, 2**ds.BitsStored, size=shape, dtype=dtype)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    return ds, arr


def encapsulated(
    frames: list[bytes], syntax: str = JPEGLSLossless, *, fragments_per_frame: int = 1, has_bot: bool = True
) -> Dataset:
    """A dataset whose pixel data is ``frames`` encapsulated by pydicom."""
    ds, _ = image(len(frames), syntax=syntax)
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds["PixelData"].VR = "OB"
    return ds


def compressed(syntax: str, frames: int = 3) -> Dataset:
    # 32x32: OpenJPEG's default resolution levels need at least that.
    ds, arr = image(frames, 32, 32)
    ds.compress(syntax, arr if frames > 1 else arr[0])
    return ds


def codestreams(syntax: str, frames: int = 3) -> list[bytes]:
    ds = compressed(syntax, frames)
    return list(generate_frames(ds.PixelData, number_of_frames=frames))


def stored(ds: Dataset, tmp_path: Path, name: str = "instance.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def indexed(path: Path) -> bytes:
    index = frame_index(dcmread(path, defer_size=DEFER_SIZE))
    assert index is not None
    return index


def native_frames(path: Path) -> list[bytes]:
    ds = dcmread(path)
    size = len(ds.PixelData) // int(ds.get("NumberOfFrames") or 1)
    return [ds.PixelData[i : i + size] for i in range(0, len(ds.PixelData), size)]


def pydicom_frames(path: Path) -> list[bytes]:
    ds = dcmread(path)
    extended = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    return list(
        generate_frames(
            ds.PixelData,
            number_of_frames=int(ds.NumberOfFrames),
            extended_offsets=extended if all(extended) else None,
        )
    )


def all_numbers(count: int) -> list[int]:
    return list(range(1, count + 1))


def spans_read(path: Path, spans: list[list[tuple[int, int]]]) -> list[bytes]:
    """What WADO-RS sends for frames located by ``frame_spans``: each frame's spans, joined."""
    data = path.read_bytes()
    return [b"".join(data[offset : offset + length] for offset, length in frame) for frame in spans]


def assert_index_reads(path: Path, expected: list[bytes]) -> bytes:
    """The index of ``path`` gives ``expected`` (read, and as the spans WADO-RS sends), and so does
    the parsing fallback."""
    index = indexed(path)
    assert frame_count(index) == len(expected)
    assert read_frames(path, index, all_numbers(len(expected))) == expected
    assert spans_read(path, frame_spans(index, all_numbers(len(expected)))) == expected
    assert file_frame_index(path) == index  # what the web server makes for a file indexed without one
    assert read_frames_parsing(path, all_numbers(len(expected))) == expected
    return index


def test_frame_spans_are_in_the_order_asked_and_refuse_frames_beyond_the_last(tmp_path: Path) -> None:
    frames = codestreams(JPEGLSLossless)
    path = stored(encapsulated(frames, fragments_per_frame=2, has_bot=True), tmp_path)
    index = indexed(path)
    spans = frame_spans(index, [3, 1, 3])
    assert [len(frame) for frame in spans] == [2, 2, 2]  # a frame of two fragments is two spans
    assert spans_read(path, spans) == read_frames(path, index, [3, 1, 3])
    with pytest.raises(FrameNotFound, match="frame 4 was asked; the instance has 3"):
        frame_spans(index, [1, 4])


@pytest.mark.parametrize(
    ("frames", "kwargs"),
    [
        pytest.param(1, {}, id="16-bit single frame"),
        pytest.param(1000, {}, id="16-bit 1000 frames"),
        pytest.param(3, {"bits": 8, "samples": 3, "photometric": "RGB"}, id="RGB 8-bit"),
        pytest.param(2, {"syntax": ImplicitVRLittleEndian}, id="implicit VR"),
    ],
)
def test_native_frames_are_slices_of_pixel_data(frames: int, kwargs: dict[str, Any], tmp_path: Path) -> None:
    ds, arr = image(frames, **kwargs)
    path = stored(ds, tmp_path)
    expected = native_frames(path)
    assert expected == [frame.tobytes() for frame in arr]
    assert_index_reads(path, expected)


def test_native_ybr_full_422_frames_hold_two_samples_per_pixel(tmp_path: Path) -> None:
    ds, _ = image(3, 4, 4, bits=8, samples=3, photometric="YBR_FULL_422")
    ds.PixelData = bytes(range(3 * 4 * 4 * 2))  # PS3.5 8.2.1: Y Y Cb Cr per two pixels
    path = stored(ds, tmp_path)
    assert_index_reads(path, [ds.PixelData[i * 32 : (i + 1) * 32] for i in range(3)])


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: UID(s).name)
def test_compressed_frames_equal_pydicoms(syntax: str, tmp_path: Path) -> None:
    path = stored(compressed(syntax), tmp_path)
    expected = pydicom_frames(path)
    assert len(expected) == 3
    assert_index_reads(path, expected)


def test_empty_basic_offset_table_one_fragment_per_frame(tmp_path: Path) -> None:
    path = stored(encapsulated(codestreams(JPEGLSLossless), has_bot=False), tmp_path)
    assert_index_reads(path, pydicom_frames(path))


def test_basic_offset_table_with_two_fragments_per_frame(tmp_path: Path) -> None:
    frames = codestreams(JPEGLSLossless)
    path = stored(encapsulated(frames, fragments_per_frame=2, has_bot=True), tmp_path)
    index = assert_index_reads(path, pydicom_frames(path))
    assert (len(index) - 1) // 16 == 6  # an entry per fragment
    assert [frame.rstrip(b"\x00") for frame in read_frames(path, index, [1, 2, 3])] == [
        frame.rstrip(b"\x00") for frame in frames
    ]


def synthetic_jp2(count: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    return [
        JP2_SIGNATURE + rng.integers(0, 256, 301, dtype=np.uint8).tobytes() + b"\xff\xd9"
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(lambda: codestreams(JPEGLSLossless), id="JPEG-LS SOI"),
        pytest.param(lambda: codestreams(JPEG2000Lossless), id="JPEG 2000 SOC"),
        pytest.param(lambda: synthetic_jp2(3), id="JP2 signature"),
    ],
)
def test_no_offset_table_frames_start_at_codestream_markers(
    frames: Callable[[], list[bytes]], tmp_path: Path
) -> None:
    path = stored(encapsulated(frames(), fragments_per_frame=2, has_bot=False), tmp_path)
    expected = pydicom_frames(path)
    assert len(expected) == 3
    assert_index_reads(path, expected)


@pytest.mark.parametrize(
    ("syntax", "has_bot", "number_of_frames"),
    [
        pytest.param(RLELossless, False, 3, id="no table, no markers"),
        pytest.param(JPEGLSLossless, False, 4, id="markers start 3 of 4 frames"),
        pytest.param(JPEGLSLossless, True, 4, id="table has 3 of 4 frames"),
    ],
)
def test_fragments_that_do_not_make_the_frames_are_not_indexed(
    syntax: str, has_bot: bool, number_of_frames: int, tmp_path: Path
) -> None:
    ds = encapsulated(codestreams(syntax), syntax, fragments_per_frame=2, has_bot=has_bot)
    ds.NumberOfFrames = number_of_frames
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None


def test_single_frame_of_several_fragments(tmp_path: Path) -> None:
    frames = codestreams(JPEGLSLossless, 1)
    ds = encapsulated(frames, fragments_per_frame=3, has_bot=False)
    path = stored(ds, tmp_path)
    index = assert_index_reads(path, pydicom_frames(path))
    assert (len(index) - 1) // 16 == 3


@pytest.mark.parametrize("lengths", ["padded", "as given"])
def test_extended_offset_table(lengths: str, tmp_path: Path) -> None:
    # Odd lengths: each item carries a padding byte that the table's lengths may leave out.
    frames = [frame + b"\x01" if len(frame) % 2 == 0 else frame for frame in codestreams(JPEGLSLossless)]
    ds = encapsulated(frames, has_bot=False)
    ds.PixelData, offsets, padded = encapsulate_extended(frames)
    ds.ExtendedOffsetTable = offsets
    ds.ExtendedOffsetTableLengths = (
        padded if lengths == "padded" else struct.pack(f"<{len(frames)}Q", *map(len, frames))
    )
    path = stored(ds, tmp_path)
    expected = pydicom_frames(path)
    assert expected == (frames if lengths == "as given" else [frame + b"\x00" for frame in frames])
    assert_index_reads(path, expected)


@pytest.mark.parametrize("defer_size", [None, DEFER_SIZE])
@pytest.mark.parametrize("kind", ["native", "encapsulated"])
def test_index_does_not_depend_on_how_pixel_data_was_read(
    defer_size: int | None, kind: str, tmp_path: Path
) -> None:
    ds = image(3)[0] if kind == "native" else compressed(RLELossless)
    path = stored(ds, tmp_path)
    index = indexed(path)
    read = dcmread(path, defer_size=defer_size)
    assert frame_index(read) == index
    read["PixelData"]  # converts (and reads) the element: pydicom keeps its position
    assert frame_index(read) == index


def blank_but(path: Path, keep: bytes) -> None:
    """Overwrite every byte of ``path`` except the one occurrence of ``keep`` with 0xFF."""
    data = path.read_bytes()
    start = data.index(keep)
    assert data.find(keep, start + 1) == -1
    path.write_bytes(b"\xff" * start + keep + b"\xff" * (len(data) - start - len(keep)))
    with pytest.raises(InvalidDicomError):
        dcmread(path)


def test_frame_2_of_1000_does_not_read_the_whole_file(tmp_path: Path) -> None:
    ds, arr = image(1000)
    path = stored(ds, tmp_path)
    index = indexed(path)
    blank_but(path, arr[1].tobytes())
    assert read_frames(path, index, [2]) == [arr[1].tobytes()]


def test_encapsulated_frame_2_does_not_read_the_whole_file(tmp_path: Path) -> None:
    frames = codestreams(JPEGLSLossless)
    path = stored(encapsulated(frames, fragments_per_frame=2), tmp_path)
    index = indexed(path)
    first, second = fragment_frame(frames[1], 2)
    # Frame 2's byte range: its two fragments and the item header between them.
    blank_but(path, first + b"\xfe\xff\x00\xe0" + struct.pack("<L", len(second)) + second)
    assert read_frames(path, index, [2]) == [first + second]


def test_frames_come_in_the_order_asked(tmp_path: Path) -> None:
    ds, arr = image(4)
    path = stored(ds, tmp_path)
    numbers = [3, 1, 3, 4]
    expected = [arr[n - 1].tobytes() for n in numbers]
    assert read_frames(path, indexed(path), numbers) == expected
    assert read_frames_parsing(path, numbers) == expected


@pytest.mark.parametrize("kind", ["native", "encapsulated"])
def test_frame_beyond_the_count_is_not_found(kind: str, tmp_path: Path) -> None:
    path = stored(image(3)[0] if kind == "native" else compressed(RLELossless), tmp_path)
    index = indexed(path)
    with pytest.raises(FrameNotFound, match="3 frame"):
        read_frames(path, index, [1, 4])
    with pytest.raises(FrameNotFound, match="3 frame"):
        read_frames_parsing(path, [4])
    with pytest.raises(ValueError, match="start at 1"):
        read_frames(path, index, [0])
    with pytest.raises(ValueError, match="start at 1"):
        read_frames_parsing(path, [0])


def test_a_file_shorter_than_its_index_is_unreadable(tmp_path: Path) -> None:
    ds, _ = image(3)
    path = stored(ds, tmp_path)
    index = indexed(path)
    path.write_bytes(path.read_bytes()[:-100])
    assert len(read_frames(path, index, [1])[0]) == 16 * 16 * 2
    with pytest.raises(UnreadableDataset, match="frame 3"):
        read_frames(path, index, [3])


def test_not_an_index() -> None:
    for bad in (b"", b"\x01", b"\x02" + bytes(16), b"\x01" + bytes(15)):
        with pytest.raises(ValueError, match="not a version 1 frame index"):
            frame_count(bad)


def test_deflated_is_not_indexed_and_parsed_instead(tmp_path: Path) -> None:
    ds, arr = image(3, syntax=DeflatedExplicitVRLittleEndian)
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None
    assert read_frames_parsing(path, [2, 3]) == [arr[1].tobytes(), arr[2].tobytes()]


def test_big_endian_is_not_indexed(tmp_path: Path) -> None:
    ds, _ = image(2, syntax=ExplicitVRBigEndian)
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None
    assert read_frames_parsing(path, [1, 2]) == native_frames(path)


def test_bit_packed_frames_are_not_indexed_and_parsed_bit_exact(tmp_path: Path) -> None:
    # 5x5 1-bit frames are 25 bits: every frame but the first starts inside a byte.
    ds, _ = image(3, 5, 5, bits=8)
    arr = np.random.default_rng(1).integers(0, 2, size=(3, 5, 5), dtype=np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pack_bits(arr, pad=False)
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None
    assert read_frames_parsing(path, [1, 2, 3]) == [pack_bits(frame, pad=False) for frame in arr]


def test_short_native_value_is_not_indexed(tmp_path: Path) -> None:
    ds, arr = image(3)
    ds.NumberOfFrames = 4
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None
    assert read_frames_parsing(path, [3]) == [arr[2].tobytes()]
    with pytest.raises(UnreadableDataset, match="fewer than 4 frames"):
        read_frames_parsing(path, [4])


def test_no_pixel_data_is_not_indexed(tmp_path: Path) -> None:
    ds, _ = image(1)
    del ds.PixelData
    path = stored(ds, tmp_path)
    assert frame_index(dcmread(path, defer_size=DEFER_SIZE)) is None
    with pytest.raises(FrameNotFound, match="0 frame"):
        read_frames_parsing(path, [1])


def test_a_file_without_an_index_of_its_own_is_parsed_or_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "not-dicom.dcm"
    garbage.write_bytes(b"\x00" * 64)
    assert file_frame_index(garbage) is None  # its frames are then parsed, which says what is wrong
    with pytest.raises(FileNotFoundError):
        file_frame_index(tmp_path / "gone.dcm")  # not readable: the storage's problem, not the file's
