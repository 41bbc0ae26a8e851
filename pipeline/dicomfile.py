"""What pacsflow reads from a received dataset without decoding it.

Received bytes are stored as they came; only the header is parsed, for the UIDs and the few values
the events carry. The dataset is also walked element by element (values skipped, not read) to prove
it is complete: pydicom on its own accepts a truncated value silently.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
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


def _plain(dataset: bytes, syntax: UID) -> bytes:
    if not syntax.is_deflated:
        return dataset
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(dataset) + inflater.flush()
    except zlib.error as exc:
        raise UnreadableDataset(f"deflated dataset cannot be inflated: {exc}") from exc
    if not inflater.eof:
        raise UnreadableDataset("deflated dataset is truncated")
    return plain


def _check_complete(plain: bytes, syntax: UID) -> None:
    stream = io.BytesIO(plain)
    end = 0
    try:
        for _ in data_element_generator(stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=0):
            end = stream.tell()  # deferred values are skipped with a seek past their length
    except (EOFError, ValueError, OSError, NotImplementedError) as exc:
        raise UnreadableDataset(f"dataset is malformed: {exc}") from exc
    if end != len(plain):
        raise UnreadableDataset(
            f"dataset is truncated: its elements need {end} bytes, {len(plain)} were received"
            if end > len(plain)
            else f"dataset is truncated: {len(plain) - end} trailing bytes do not form an element"
        )


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


def read_header(dataset: bytes, transfer_syntax: str) -> Header:
    """Check that ``dataset`` (encoded in ``transfer_syntax``) is whole and read its header."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise UnreadableDataset(f"{transfer_syntax!r} is not a transfer syntax")
    plain = _plain(dataset, syntax)
    _check_complete(plain, syntax)
    try:
        ds = read_dataset(
            io.BytesIO(plain),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=_stop_at_pixels,
            specific_tags=_WANTED,
        )
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


def encode_file_meta(meta: FileMetaDataset) -> bytes:
    """The preamble, ``DICM`` and the File Meta Information group, ready to precede a dataset."""
    out = io.BytesIO()
    out.write(PREAMBLE)
    fp = DicomFileLike(out)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return out.getvalue()
