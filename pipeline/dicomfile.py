"""What pacsflow reads from a received dataset without decoding it.

Received bytes are stored as they came; only the header is parsed, for the UIDs and the few values
the events carry. One pass over the dataset (``_Walk``) does both jobs: every element's header is
read and every value skipped by its length, to prove the dataset complete (pydicom on its own
accepts a truncated value silently), and the few wanted values are picked up on the way, then
decoded by pydicom. A dataset is read from bytes (a C-STORE's) or from an open file (a STOW-RS
part on disk, memory-mapped) alike, never more than its header read into memory from a file.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from pipeline.errors import UnreadableDataset

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_CHARSET = Tag(0x0008, 0x0005)
_NUMBER_OF_FRAMES = 0x00280008
_ROWS = 0x00280010
_WANTED: list[BaseTag | int] = [
    Tag(name)
    for name in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "AccessionNumber",
        "StudyDate",
        "NumberOfFrames",
        "Rows",
    )
]
PREAMBLE = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True)
class Header:
    """The header values of one received instance, as raw strings (not yet validated)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    accession_number: str | None
    study_date: str | None
    number_of_frames: int | None


_INFLATE_CHUNK = 1 << 20
_INFLATED_IN_MEMORY = 16 << 20  # a larger inflated dataset spills to a temporary file

Buffer = bytes | bytearray | memoryview | mmap.mmap


@contextmanager
def _inflated(stream: BinaryIO) -> Iterator[Buffer]:
    """A deflated dataset (from the stream's position on), inflated: in memory, or in a mapped
    temporary file when larger than ``_INFLATED_IN_MEMORY``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    memory = bytearray()
    with tempfile.TemporaryFile() as spill:
        spilled = False
        try:
            while chunk := stream.read(_INFLATE_CHUNK):
                plain = inflater.decompress(chunk)
                if not spilled and len(memory) + len(plain) > _INFLATED_IN_MEMORY:
                    spill.write(memory)
                    memory, spilled = bytearray(), True
                if spilled:
                    spill.write(plain)
                else:
                    memory += plain
                if inflater.eof:
                    break
            rest = inflater.flush()
        except zlib.error as exc:
            raise UnreadableDataset(f"deflated dataset cannot be inflated: {exc}") from exc
        if not inflater.eof:
            raise UnreadableDataset("deflated dataset is truncated")
        if not spilled:
            yield bytes(memory + rest)
            return
        spill.write(rest)
        spill.flush()
        with mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped


# Value representations with a 4-byte length in Explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_WANTED_TAGS = frozenset(int(tag) for tag in _WANTED)


class _Malformed(Exception):
    """The walk found no valid element where one must be."""


class _Truncated(Exception):
    """The walk needs more bytes than there are; ``args[0]``: at least how many."""


class _Walk:
    """One pass over an encoded dataset (PS3.5 7): every element's header read, every value skipped
    by its length except the top-level ones in ``_WANTED``, every item of an undefined-length
    sequence or of encapsulated pixel data walked, so that a dataset is only accepted whole.

    Works on a buffer (bytes, or a memory map of a file: skipped values are never touched), with
    ``struct`` at offsets: the completeness check and the header values in one parse.
    """

    def __init__(self, buffer: Buffer, start: int, little_endian: bool) -> None:
        self.buffer = buffer
        self.start = start
        self.end = len(buffer)
        order = "<" if little_endian else ">"
        self.little_endian = little_endian
        self.implicit = struct.Struct(order + "HHL")
        self.explicit = struct.Struct(order + "HH2sH")
        self.long = struct.Struct(order + "L")

    def top(self, implicit: bool) -> dict[BaseTag, RawDataElement]:
        """The wanted elements of a whole dataset; raise ``_Truncated`` or ``_Malformed``."""
        buffer, end = self.buffer, self.end
        found: dict[BaseTag, RawDataElement] = {}
        position = self.start
        while True:
            if end - position < 8:
                if position < end:
                    raise _Malformed(f"{end - position} trailing bytes do not form an element")
                return found
            tag, vr, length, value_at = self._element(position, implicit)
            if tag == _ITEM_END:
                # pydicom's reader takes it for the end of the dataset: what follows is no element.
                raise _Malformed(f"{end - position} trailing bytes do not form an element")
            if length == _UNDEFINED:
                position = self._undefined(value_at, tag, vr, implicit)
                continue
            position = value_at + length
            if position > end:
                raise _Truncated(position - self.start)
            if tag in _WANTED_TAGS:
                value = buffer[value_at:position]
                found[BaseTag(tag)] = RawDataElement(
                    BaseTag(tag),
                    vr.decode("ascii") if vr is not None else None,
                    length,
                    value if isinstance(value, bytes) else bytes(value),
                    value_at - self.start,
                    implicit,
                    self.little_endian,
                )

    def _element(self, position: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """The element whose header starts at ``position``: (tag, VR or None, length, where its
        value starts). Item tags carry no VR, even in Explicit VR."""
        if self.end - position < 8:
            raise _Truncated(position + 8 - self.start)
        if implicit:
            group, element, length = self.implicit.unpack_from(self.buffer, position)
            return group << 16 | element, None, length, position + 8
        group, element, vr, length = self.explicit.unpack_from(self.buffer, position)
        if group == 0xFFFE or not b"AA" <= vr <= b"ZZ":
            # An item tag, or (as pydicom reads it) one element encoded in Implicit VR.
            group, element, length = self.implicit.unpack_from(self.buffer, position)
            return group << 16 | element, None, length, position + 8
        if vr in _LONG_VRS:
            if self.end - position < 12:
                raise _Truncated(position + 12 - self.start)
            return (
                group << 16 | element,
                vr,
                self.long.unpack_from(self.buffer, position + 8)[0],
                position + 12,
            )
        return group << 16 | element, vr, length, position + 8

    def _undefined(self, position: int, tag: int, vr: bytes | None, implicit: bool) -> int:
        """Walk the items of an undefined-length value from ``position``; return where it ends.

        A sequence (SQ; UN, whose items are Implicit VR Little Endian, PS3.5 6.2.2; any
        undefined length in Implicit VR but the pixel data) holds datasets; encapsulated pixel
        data holds fragments, bytes of defined length."""
        if vr == b"SQ" or (vr is None and tag != _PIXEL_DATA):
            datasets: bool | None = implicit
        elif vr == b"UN":
            datasets = True
        else:
            datasets = None  # fragments
        while True:
            item, _, length, value_at = self._element(position, True)
            if item == _SEQUENCE_END:
                return value_at
            if item != _ITEM:
                raise _Malformed(
                    f"({item >> 16:04X},{item & 0xFFFF:04X}) where an item of "
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) must be"
                )
            if length == _UNDEFINED:
                if datasets is None:
                    raise _Malformed("a pixel data fragment of undefined length")
                position = self._item(value_at, None, datasets)
                continue
            position = value_at + length
            if position > self.end:
                raise _Truncated(position - self.start)
            if datasets is not None:
                self._item(value_at, position, datasets)

    def _item(self, position: int, stop: int | None, implicit: bool) -> int:
        """Walk an item's dataset: up to ``stop``, or to its Item Delimitation Item."""
        while stop is None or position < stop:
            tag, vr, length, value_at = self._element(position, implicit)
            if tag == _ITEM_END:
                if stop is None:
                    return value_at
                raise _Malformed("an Item Delimitation Item in an item of defined length")
            if length == _UNDEFINED:
                position = self._undefined(value_at, tag, vr, implicit)
            else:
                position = value_at + length
                if position > self.end:
                    raise _Truncated(position - self.start)
        if position != stop:
            raise _Malformed("an item's elements overrun its length")
        return position


@contextmanager
def _buffer(dataset: bytes | BinaryIO) -> Iterator[tuple[Buffer, int]]:
    """The dataset's bytes and where it starts: bytes as given, a file mapped (its pixel data is
    then never read), another stream read whole."""
    if isinstance(dataset, bytes | bytearray | memoryview):
        yield dataset, 0
        return
    start = dataset.tell()
    try:
        fileno = dataset.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fileno = -1
    if fileno < 0 or os.fstat(fileno).st_size <= start:
        yield dataset.read(), 0
        return
    with mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) as mapped:
        yield mapped, start


class _Values:
    """The wanted elements' values, decoded as pydicom decodes them (the dataset's character set
    for text), without a pydicom ``Dataset`` around them."""

    def __init__(self, found: dict[BaseTag, RawDataElement]) -> None:
        self._found = found
        charset = found.get(_CHARSET)
        self._encodings: tuple[str, ...] = (
            _encodings(charset.VR, charset.value, charset.is_implicit_VR, charset.is_little_endian)
            if charset is not None and isinstance(charset.value, bytes)
            else (default_encoding,)
        )

    def __contains__(self, tag: int) -> bool:
        return tag in self._found

    def value(self, tag: int) -> Any:
        raw = self._found.get(BaseTag(tag))
        if raw is None or not isinstance(raw.value, bytes):
            return None
        return _decoded(tag, raw.VR, raw.value, raw.is_implicit_VR, raw.is_little_endian, self._encodings)

    def text(self, tag: int) -> str | None:
        value = self.value(tag)
        if value is None or value == "":
            return None
        return str(value).strip() or None

    def uid(self, tag: int) -> str:
        """A UID as its bytes have it, less its padding: pydicom's ``UID`` strips all whitespace,
        and a newline or a tab is not padding but part of a value that ``Uid`` must refuse."""
        raw = self._found.get(BaseTag(tag))
        value = None if raw is None else raw.value
        if isinstance(value, bytes):
            return value.decode("latin-1").rstrip("\x00 ")
        return "" if value is None else str(value)


# The instances of a series repeat their patient, accession, date and character set: each value
# is decoded by pydicom once, not once per instance.
@functools.lru_cache(maxsize=256)
def _encodings(vr: str | None, value: bytes, implicit: bool, little_endian: bool) -> tuple[str, ...]:
    raw = RawDataElement(_CHARSET, vr, len(value), value, 0, implicit, little_endian)
    return tuple(convert_encodings(convert_raw_data_element(raw).value))


@functools.lru_cache(maxsize=4096)
def _decoded(
    tag: int, vr: str | None, value: bytes, implicit: bool, little_endian: bool, encodings: tuple[str, ...]
) -> Any:
    raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, little_endian)
    return convert_raw_data_element(raw, encoding=list(encodings)).value


def _wanted(buffer: Buffer, start: int, syntax: _Syntax) -> _Values:
    """The wanted elements of a whole dataset; raise ``UnreadableDataset`` if it is not whole."""
    walk = _Walk(buffer, start, syntax.little_endian)
    try:
        return _Values(walk.top(syntax.implicit))
    except _Truncated as exc:
        raise UnreadableDataset(
            f"dataset is truncated: its elements need {exc.args[0]} bytes, {walk.end - start} were received"
        ) from None
    except _Malformed as exc:
        kind = "truncated" if "trailing" in str(exc) else "malformed"
        raise UnreadableDataset(f"dataset is {kind}: {exc}") from None


@dataclass(frozen=True)
class _Syntax:
    known: bool
    deflated: bool
    implicit: bool
    little_endian: bool


@functools.lru_cache(maxsize=64)
def _syntax(transfer_syntax: str) -> _Syntax:
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return _Syntax(False, False, False, True)
    return _Syntax(True, uid.is_deflated, uid.is_implicit_VR, uid.is_little_endian)


def read_header(dataset: bytes | BinaryIO, transfer_syntax: str) -> Header:
    """Check that ``dataset`` (encoded in ``transfer_syntax``) is whole and read its header.

    ``dataset`` is the dataset's bytes, or a seekable binary file positioned where the dataset
    starts and ending where it ends (mapped, not read: its pixel data stays on disk). One pass
    (``_Walk``) proves it complete and picks the wanted elements.
    """
    syntax = _syntax(transfer_syntax)
    if not syntax.known:
        raise UnreadableDataset(f"{transfer_syntax!r} is not a transfer syntax")
    try:
        if syntax.deflated:
            stream = io.BytesIO(dataset) if isinstance(dataset, bytes) else dataset
            with _inflated(stream) as plain:
                values = _wanted(plain, 0, syntax)
        else:
            with _buffer(dataset) as (buffer, start):
                values = _wanted(buffer, start, syntax)
        frames = values.value(_NUMBER_OF_FRAMES)
        number_of_frames = int(frames) if frames not in (None, "") else 1 if _ROWS in values else None
        return Header(
            sop_class_uid=values.uid(0x00080016),
            sop_instance_uid=values.uid(0x00080018),
            study_uid=values.uid(0x0020000D),
            series_uid=values.uid(0x0020000E),
            patient_id=values.text(0x00100020) or "",
            accession_number=values.text(0x00080050),
            study_date=values.text(0x00080020),
            number_of_frames=number_of_frames,
        )
    except (ValueError, TypeError, LookupError, EOFError) as exc:
        raise UnreadableDataset(f"header cannot be read: {exc}") from exc


@dataclass(frozen=True)
class Part10:
    """A DICOM file's File Meta Information, and where its dataset starts."""

    meta: FileMetaDataset
    dataset_offset: int
    sound: bool
    """Whether the meta may be kept as it is: every required element there, its group length right."""


_REQUIRED_META = (
    "FileMetaInformationVersion",
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
)


def _not_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag >> 16 != 2)


def read_part10(fp: BinaryIO) -> Part10:
    """Read a Part 10 file's preamble and File Meta Information; leave ``fp`` where its dataset
    starts (PS3.10 7.1: 128-byte preamble, ``DICM``, group 0002 in Explicit VR Little Endian).

    A file that starts with its File Meta Information, without preamble and ``DICM`` (what
    pydicom writes of a dataset made in memory, and so what dicomweb-client posts), is read too;
    its meta is not sound, so that the stored file gets the preamble.
    """
    head = fp.read(len(PREAMBLE))
    preamble = head[128:] == b"DICM"
    if not preamble:
        if head[:2] != b"\x02\x00":
            raise UnreadableDataset(
                "not a DICOM Part 10 file: no 'DICM' after a 128-byte preamble and no File Meta "
                "Information; send files as written to media (PS3.10)"
            )
        fp.seek(0)
    start = fp.tell()
    try:
        meta = FileMetaDataset(
            read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_meta)
        )
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        group_length = meta.get("FileMetaInformationGroupLength")
    except (ValueError, TypeError, LookupError, EOFError, NotImplementedError, InvalidDicomError) as exc:
        raise UnreadableDataset(f"File Meta Information cannot be read: {exc}") from exc
    offset = fp.tell()
    if not syntax:
        raise UnreadableDataset("File Meta Information has no TransferSyntaxUID (0002,0010)")
    sound = (
        preamble
        and group_length == offset - start - 12
        and all(meta.get(k) not in (None, "") for k in _REQUIRED_META)
    )
    return Part10(meta, offset, sound)


def copy_dataset(fp: BinaryIO, offset: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of a file from ``offset`` on, in chunks: a dataset copied without holding it."""
    fp.seek(offset)
    while data := fp.read(chunk):
        yield data


def encode_file_meta(meta: FileMetaDataset) -> bytes:
    """The preamble, ``DICM`` and the File Meta Information group, ready to precede a dataset."""
    out = io.BytesIO()
    out.write(PREAMBLE)
    fp = DicomFileLike(out)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return out.getvalue()


_META_ELEMENT = struct.Struct("<HH2sH")
_META_LONG_ELEMENT = struct.Struct("<HH2s2xL")


def _meta_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return _META_ELEMENT.pack(0x0002, element, vr, len(value)) + value


def encode_announced_meta(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    implementation_class: str,
    implementation_version: str,
) -> bytes:
    """``encode_file_meta`` of the File Meta Information a C-STORE's dataset gets (version 00 01,
    the SOP class and instance the request announced, the negotiated transfer syntax, an
    implementation), byte for byte, without building a pydicom dataset for it."""
    body = b"".join(
        (
            _META_LONG_ELEMENT.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
            _meta_element(0x0002, b"UI", sop_class.encode("latin-1"), b"\x00"),
            _meta_element(0x0003, b"UI", sop_instance.encode("latin-1"), b"\x00"),
            _meta_element(0x0010, b"UI", transfer_syntax.encode("latin-1"), b"\x00"),
            _meta_element(0x0012, b"UI", implementation_class.encode("latin-1"), b"\x00"),
            _meta_element(0x0013, b"SH", implementation_version.encode("latin-1"), b" "),
        )
    )
    return PREAMBLE + _META_ELEMENT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body
