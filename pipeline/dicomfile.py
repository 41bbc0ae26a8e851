"""What pacsflow reads from a received dataset without decoding it.

Received bytes are stored as they came; only the header is parsed, for the UIDs and the few values
the events carry. The dataset is also walked element by element (values skipped, not read) to prove
it is complete: pydicom on its own accepts a truncated value silently. A dataset is read from bytes
(a C-STORE's) or from an open file (a STOW-RS part on disk) alike, never more than its header read
into memory from a file.
"""

from __future__ import annotations

import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from pipeline.errors import UnreadableDataset

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
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


@contextmanager
def _plain(stream: BinaryIO, syntax: UID) -> Iterator[BinaryIO]:
    """The dataset from the stream's position on, inflated when its syntax is deflated."""
    if not syntax.is_deflated:
        yield stream
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with tempfile.SpooledTemporaryFile(_INFLATED_IN_MEMORY) as plain:
        try:
            while chunk := stream.read(_INFLATE_CHUNK):
                plain.write(inflater.decompress(chunk))
                if inflater.eof:
                    break
            plain.write(inflater.flush())
        except zlib.error as exc:
            raise UnreadableDataset(f"deflated dataset cannot be inflated: {exc}") from exc
        if not inflater.eof:
            raise UnreadableDataset("deflated dataset is truncated")
        plain.seek(0)
        yield plain  # type: ignore[misc]  # a SpooledTemporaryFile is a binary file


def _check_complete(stream: BinaryIO, syntax: UID) -> None:
    start = stream.tell()
    size = stream.seek(0, os.SEEK_END) - start
    stream.seek(start)
    end = start
    try:
        for _ in data_element_generator(stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=0):
            end = stream.tell()  # deferred values are skipped with a seek past their length
    except (EOFError, ValueError, OSError, NotImplementedError) as exc:
        raise UnreadableDataset(f"dataset is malformed: {exc}") from exc
    used = end - start
    if used != size:
        raise UnreadableDataset(
            f"dataset is truncated: its elements need {used} bytes, {size} were received"
            if used > size
            else f"dataset is truncated: {size - used} trailing bytes do not form an element"
        )
    stream.seek(start)


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag >= _PIXEL_DATA)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID as its bytes have it, less its padding: pydicom's ``UID`` strips all whitespace, and
    a newline or a tab is not padding but part of a value that ``Uid`` must refuse."""
    element = ds.get_item(keyword)
    value = None if element is None else element.value
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return "" if value is None else str(value)


def read_header(dataset: bytes | BinaryIO, transfer_syntax: str) -> Header:
    """Check that ``dataset`` (encoded in ``transfer_syntax``) is whole and read its header.

    ``dataset`` is the dataset's bytes, or a seekable binary file positioned where the dataset
    starts and ending where it ends; values are skipped with seeks, so pixel data is not read.
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise UnreadableDataset(f"{transfer_syntax!r} is not a transfer syntax")
    stream = io.BytesIO(dataset) if isinstance(dataset, bytes) else dataset
    with _plain(stream, syntax) as plain:
        _check_complete(plain, syntax)
        try:
            ds = read_dataset(
                plain,
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                stop_when=_stop_at_pixels,
                specific_tags=_WANTED,
            )
        except (ValueError, TypeError, LookupError, EOFError) as exc:
            raise UnreadableDataset(f"header cannot be read: {exc}") from exc
    try:
        frames = ds.get("NumberOfFrames")
        number_of_frames = int(frames) if frames not in (None, "") else 1 if "Rows" in ds else None
        return Header(
            sop_class_uid=_uid(ds, "SOPClassUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            patient_id=_text(ds, "PatientID") or "",
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_text(ds, "StudyDate"),
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
