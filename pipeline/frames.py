"""Where each frame of a stored instance sits in its file, so that WADO-RS reads a frame with a seek.

At indexing, the file is read with ``defer_size``: pixel data stays unread, but pydicom still
records where its value starts (``value_tell``), for native and for encapsulated pixel data alike.
From that and the item headers of the fragments (never the fragments themselves) we build, once,
a *frame index*: for every frame, the file offsets and lengths of its bytes. The web server keeps
it in a bytea column and reads a frame of a 1,000-frame instance with one seek, not a parse.

Index format, version 1, all little endian::

    byte 0       format version (1)
    then         one 16-byte entry per span, struct '<IQI':
                     frame number (1-based), absolute file offset, length in bytes

Entries are sorted by frame number, then offset; a frame's bytes are its entries' bytes joined
(an encapsulated frame may span several fragments). Every frame has at least one entry, so the
number of frames is the last entry's frame number. Lengths fit in 32 bits: a native value and an
encapsulated item both have 32-bit lengths.

The bytes are what pydicom gives: a native frame is its slice of Pixel Data as stored; an
encapsulated frame is its fragments joined, trailing padding byte included, as
``pydicom.encaps.generate_frames`` yields it. Files an index cannot describe (deflated, big
endian, bit-packed frames) are read with ``read_frames_parsing`` instead.
"""

from __future__ import annotations

import io
import os
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, parse_basic_offsets, parse_fragments
from pydicom.uid import UID

from pipeline.errors import PacsflowError, UnreadableDataset

_VERSION = 1
_ENTRY = struct.Struct("<IQI")
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_BYTES = 1024
# What a fragment that starts a frame begins with. JPEG (and JPEG-LS) SOI is always followed by
# another marker, and a JPEG 2000 codestream's SOC by SIZ: requiring both keeps a continuation
# fragment that happens to begin with FFD8 or FF4F from starting a frame.
_CODESTREAM_STARTS = (
    b"\xff\xd8\xff",  # JPEG, JPEG-LS: SOI
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream: SOC, SIZ
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JP2 file: signature box
)
_LONGEST_START = max(len(start) for start in _CODESTREAM_STARTS)


class FrameNotFound(PacsflowError):
    """A frame number beyond the instance's frames."""


class _Unindexable(Exception):
    """The pixel data's layout cannot be described by a frame index; read it by parsing."""


class _Span(NamedTuple):
    frame: int
    offset: int
    length: int


class _PixelValue(NamedTuple):
    offset: int  # of the value's first byte in the file
    length: int | None  # None: undefined length (encapsulated)
    value: bytes | None  # None: deferred, still in the file


class _Fragment(NamedTuple):
    item: int  # position of the item tag in the stream the fragments were parsed from
    length: int


def frame_index(dataset: Dataset) -> bytes | None:
    """Where each frame's bytes are in the file ``dataset`` was read from.

    ``dataset`` is read with ``dcmread(path, defer_size=...)``; its pixel data is not read.
    None when there is no pixel data or an index cannot describe it: deflated or big endian
    transfer syntax, BitsAllocated not a multiple of 8, a native value shorter than its frames,
    fragments that cannot be assigned to exactly NumberOfFrames frames.
    """
    try:
        syntax = _indexable_syntax(dataset)
        pixels = _pixel_value(dataset)
        frames = _number_of_frames(dataset)
        if frames < 1:
            raise _Unindexable
        if syntax.is_encapsulated:
            spans = _encapsulated_spans(dataset, pixels, frames)
        else:
            spans = _native_spans(dataset, pixels, frames)
    # A malformed header value (NumberOfFrames "abc") costs the index, not the instance: its frames
    # are still read, by parsing.
    except (_Unindexable, ValueError, TypeError):
        return None
    return bytes([_VERSION]) + b"".join(_ENTRY.pack(*span) for span in spans)


def file_frame_index(path: str | os.PathLike[str]) -> bytes | None:
    """``frame_index`` of the file at ``path``, read for it (its pixel data left unread where
    pydicom can); None when an index cannot describe it or it cannot be parsed (its frames are then
    read by parsing, which says why). An ``OSError`` is raised: the file is not readable."""
    try:
        dataset = dcmread(path, defer_size=_DEFER_BYTES)
    except OSError:
        raise
    except Exception:  # pydicom's errors on a malformed file have no common base
        return None
    return frame_index(dataset)


def frame_count(index: bytes) -> int:
    """The number of frames ``index`` describes."""
    return _entry(index, _entry_count(index) - 1).frame


def read_frames(path: Path, index: bytes, numbers: Sequence[int]) -> list[bytes]:
    """Frames ``numbers`` (1-based, in the order asked) of the file at ``path``, located by ``index``.

    Only the wanted frames' bytes are read, in file order, each once however often it is asked.
    """
    _check_numbers(numbers, frame_count(index))
    found: dict[int, bytes] = {}
    with path.open("rb") as fp:
        for number in sorted(set(numbers)):
            found[number] = b"".join(_read_span(fp, path, span) for span in _spans(index, number))
    return [found[number] for number in numbers]


def frame_spans(index: bytes, numbers: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Where frames ``numbers`` (1-based, in the order asked) are in the file ``index`` describes:
    each frame's (offset, length) spans, its bytes being theirs joined."""
    _check_numbers(numbers, frame_count(index))
    return [[(span.offset, span.length) for span in _spans(index, number)] for number in numbers]


def read_frames_parsing(path: Path, numbers: Sequence[int]) -> list[bytes]:
    """Frames ``numbers`` of the file at ``path``, found by reading it with pydicom.

    The fallback when no index was stored. The bytes are those an index would give; a frame of
    bit-packed pixel data (BitsAllocated 1), which need not start on a byte, is its bits packed
    from bit 0 of its first byte, the last byte padded with zero bits. Big endian values are
    returned as stored.
    """
    if not numbers:
        return []
    ds = dcmread(path)
    count = _number_of_frames(ds) if _PIXEL_DATA in ds else 0
    _check_numbers(numbers, count)
    wanted = set(numbers)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        found = _parsed_encapsulated(ds, path, wanted, count)
    else:
        found = _parsed_native(ds, path, wanted)
    return [found[number] for number in numbers]


def _indexable_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not uid:
        raise _Unindexable
    syntax = UID(uid)
    # A deflated file's offsets are positions in the inflated stream, not in the file.
    if not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
        raise _Unindexable
    return syntax


def _pixel_value(ds: Dataset) -> _PixelValue:
    if _PIXEL_DATA not in ds:
        raise _Unindexable
    # keep_deferred: the element as read, without reading a deferred value. It is already a
    # DataElement if something converted it; that keeps the position as ``file_tell``.
    element: DataElement | RawDataElement = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement):
        undefined = element.length == _UNDEFINED_LENGTH
        pixels = _PixelValue(element.value_tell, None if undefined else element.length, element.value)
    else:
        value = element.value if isinstance(element.value, bytes) else None
        if element.file_tell is None or value is None:
            raise _Unindexable
        pixels = _PixelValue(element.file_tell, None if element.is_undefined_length else len(value), value)
    if pixels.length == 0:
        raise _Unindexable
    return pixels


def _number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    return 1 if value in (None, "") else int(value)


def _frame_bits(ds: Dataset) -> int | None:
    """Bits in one native frame, None if an attribute that sizes it is missing."""
    rows, columns, bits = ds.get("Rows"), ds.get("Columns"), ds.get("BitsAllocated")
    if rows is None or columns is None or bits is None:
        return None
    size = int(rows) * int(columns) * int(ds.get("SamplesPerPixel") or 1) * int(bits)
    # PS3.5 8.2.1: native YBR_FULL_422 stores two samples per pixel (Y Y Cb Cr for two pixels).
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        size = size // 3 * 2
    return size


def _native_spans(ds: Dataset, pixels: _PixelValue, frames: int) -> list[_Span]:
    bits = _frame_bits(ds)
    if pixels.length is None or not bits or int(ds.BitsAllocated) % 8:
        raise _Unindexable
    size = bits // 8
    if pixels.length < frames * size:
        raise _Unindexable
    return [_Span(number, pixels.offset + (number - 1) * size, size) for number in range(1, frames + 1)]


@contextmanager
def _value_stream(ds: Dataset, pixels: _PixelValue) -> Iterator[tuple[BinaryIO, int]]:
    """A stream at the start of the pixel data value, and what turns its positions into file offsets."""
    if pixels.value is not None:
        yield io.BytesIO(pixels.value), pixels.offset
        return
    filename = getattr(ds, "filename", None)
    if not isinstance(filename, str | os.PathLike):
        raise _Unindexable
    with open(filename, "rb") as fp:
        fp.seek(pixels.offset)
        yield fp, 0


def _encapsulated_spans(ds: Dataset, pixels: _PixelValue, frames: int) -> list[_Span]:
    if pixels.length is not None:
        raise _Unindexable
    with _value_stream(ds, pixels) as (stream, base):
        try:
            basic = parse_basic_offsets(stream)
            first = stream.tell()
            _, items = parse_fragments(stream)
            fragments = [_Fragment(item, _item_length(stream, item)) for item in items]
        except (ValueError, struct.error) as exc:
            raise _Unindexable from exc
        if not fragments:
            raise _Unindexable
        extended = _extended_offsets(ds)
        if extended is not None:
            spans = _by_extended_table(fragments, first, extended, frames)
            return [span._replace(offset=base + span.offset) for span in spans]
        if frames == 1:
            owners = [1] * len(fragments)
        elif len(fragments) == frames:
            owners = list(range(1, frames + 1))
        elif basic:
            owners = _owners_by_basic_table(fragments, first, basic, frames)
        else:
            owners = _owners_by_markers(stream, fragments, frames)
    return [
        _Span(owner, base + fragment.item + 8, fragment.length)
        for owner, fragment in zip(owners, fragments, strict=True)
    ]


def _item_length(stream: BinaryIO, item: int) -> int:
    stream.seek(item + 4)
    length: int = struct.unpack("<L", stream.read(4))[0]
    return length


def _extended_offsets(ds: Dataset) -> tuple[list[int], list[int]] | None:
    offsets, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    if not offsets or not lengths:
        return None
    if len(offsets) % 8 or len(lengths) % 8:
        raise _Unindexable
    return (
        list(struct.unpack(f"<{len(offsets) // 8}Q", offsets)),
        list(struct.unpack(f"<{len(lengths) // 8}Q", lengths)),
    )


def _by_extended_table(
    fragments: list[_Fragment], first: int, extended: tuple[list[int], list[int]], frames: int
) -> list[_Span]:
    """One fragment per frame (PS3.3 C.7.6.3.1.8), its length as the table gives it.

    pydicom reads exactly the table's length, which may leave out the item's padding byte; so
    do we, and we prefer this table to the Basic Offset Table as pydicom does.
    """
    offsets, lengths = extended
    if len(offsets) != frames or len(lengths) != frames:
        raise _Unindexable
    item_lengths = {fragment.item: fragment.length for fragment in fragments}
    spans = []
    for number, (offset, length) in enumerate(zip(offsets, lengths, strict=True), start=1):
        item = first + offset
        if length > item_lengths.get(item, -1):
            raise _Unindexable
        spans.append(_Span(number, item + 8, length))
    return spans


def _owners_by_basic_table(
    fragments: list[_Fragment], first: int, basic: list[int], frames: int
) -> list[int]:
    """The frame of each fragment; the table's offsets are measured from the first fragment's item."""
    starts = {fragment.item - first for fragment in fragments}
    increasing = all(a < b for a, b in pairwise(basic))
    if len(basic) != frames or basic[0] != 0 or not increasing or not starts.issuperset(basic):
        raise _Unindexable
    return [bisect_right(basic, fragment.item - first) for fragment in fragments]


def _owners_by_markers(stream: BinaryIO, fragments: list[_Fragment], frames: int) -> list[int]:
    """The frame of each fragment, a new frame starting at each fragment that starts a codestream."""
    owners = []
    frame = 0
    for fragment in fragments:
        stream.seek(fragment.item + 8)
        if stream.read(min(_LONGEST_START, fragment.length)).startswith(_CODESTREAM_STARTS):
            frame += 1
        elif frame == 0:
            raise _Unindexable
        owners.append(frame)
    if frame != frames:
        raise _Unindexable
    return owners


class _FrameNumbers:
    """The entries' frame numbers as a sequence, for ``bisect`` without unpacking the whole index."""

    def __init__(self, index: bytes) -> None:
        self._index = index
        self._count = _entry_count(index)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, position: int) -> int:
        return _entry(self._index, position).frame


def _entry_count(index: bytes) -> int:
    count, rest = divmod(len(index) - 1, _ENTRY.size)
    if not index or index[0] != _VERSION or rest or count < 1:
        raise ValueError(f"not a version {_VERSION} frame index ({len(index)} bytes)")
    return count


def _entry(index: bytes, position: int) -> _Span:
    return _Span(*_ENTRY.unpack_from(index, 1 + position * _ENTRY.size))


def _spans(index: bytes, number: int) -> Iterator[_Span]:
    numbers = _FrameNumbers(index)
    for position in range(bisect_left(numbers, number), len(numbers)):
        span = _entry(index, position)
        if span.frame != number:
            return
        yield span


def _read_span(fp: BinaryIO, path: Path, span: _Span) -> bytes:
    fp.seek(span.offset)
    data = fp.read(span.length)
    if len(data) != span.length:
        raise UnreadableDataset(
            f"{path} ends before frame {span.frame}'s bytes at {span.offset}+{span.length}: "
            "the file changed since it was indexed; index it again"
        )
    return data


def _check_numbers(numbers: Sequence[int], count: int) -> None:
    for number in numbers:
        if number < 1:
            raise ValueError(f"frame numbers start at 1, {number} was asked")
        if number > count:
            raise FrameNotFound(f"frame {number} was asked; the instance has {count} frame(s)")


def _parsed_encapsulated(ds: Dataset, path: Path, wanted: set[int], count: int) -> dict[int, bytes]:
    extended = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    frames = generate_frames(
        ds.PixelData, number_of_frames=count, extended_offsets=extended if all(extended) else None
    )
    found: dict[int, bytes] = {}
    last = max(wanted)
    for number, frame in enumerate(frames, start=1):
        if number in wanted:
            found[number] = frame
        if number == last:
            return found
    raise UnreadableDataset(f"{path}: the encapsulated pixel data holds fewer than {last} frames")


def _parsed_native(ds: Dataset, path: Path, wanted: set[int]) -> dict[int, bytes]:
    bits = _frame_bits(ds)
    if not bits:
        raise UnreadableDataset(f"{path}: Rows, Columns or BitsAllocated is missing or zero")
    data: bytes = ds.PixelData
    if len(data) * 8 < max(wanted) * bits:
        raise UnreadableDataset(f"{path}: the pixel data holds fewer than {max(wanted)} frames")
    return {number: _bit_slice(data, (number - 1) * bits, bits) for number in wanted}


def _bit_slice(data: bytes, start: int, bits: int) -> bytes:
    """``bits`` bits of ``data`` from bit ``start``, packed from bit 0; DICOM packs bits LSB first."""
    if start % 8 == 0 and bits % 8 == 0:
        return data[start // 8 : (start + bits) // 8]
    chunk = np.frombuffer(data[start // 8 : -(-(start + bits) // 8)], dtype=np.uint8)
    unpacked = np.unpackbits(chunk, bitorder="little")[start % 8 : start % 8 + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()
