"""Re-encoding an instance in another transfer syntax: the one way pacsflow does it, for the web
server's transcoded answers and for the converted copies the conversion agent keeps.

Pixel data is decoded with pydicom's pixel handlers (its own RLE; pylibjpeg with libjpeg and
openjpeg; pyjpegls) and, for a compressed target, encoded again. The instance keeps every UID: the
same instance in another encoding is still that instance, and pydicom would make a new SOP
Instance UID by default.

A converted copy is written beside its instance (``StorageLayout.converted_path``), durably, and
described by a frame index (``pipeline.frames``) like a stored file, so that its frames are read
with a seek. Everything here blocks (whole images are decoded): callers run it in a thread.
"""

from __future__ import annotations

import errno
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pipeline import frames
from pipeline.errors import PacsflowError, StorageUnavailable
from pipeline.models import ConversionRequest, TenantId, Uid
from pipeline.stores.files import InstanceLocation, StorageLayout, write_atomic

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
COMPRESSED_TARGETS = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
"""Compressed syntaxes ``reencode`` encodes to: lossless only, so that the pixels stay the same."""
_HEADER_DEFER_BYTES = 1024
"""Values longer than this stay unread when a copy's frame index is made (its pixel data)."""


class ConversionFailed(PacsflowError):
    """The instance cannot be converted as it is (its pixel data does not decode, no codec for its
    syntax, a request that does not name it): trying again gives the same answer."""


@dataclass(frozen=True)
class Converted:
    path: Path
    syntax: str
    frame_index: bytes | None
    """``pipeline.frames.frame_index`` of the copy; None: its frames are read by parsing it."""
    size: int


def decodable(syntax: str) -> bool:
    """Whether pixel data stored in ``syntax`` can be decoded here."""
    if syntax in NATIVE:
        return True
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored: str, target: str) -> bool:
    """Whether an instance stored in ``stored`` can be sent in ``target`` here: the same syntax, or a
    native or lossless compressed one its pixel data can be decoded for (and encoded in)."""
    if target == stored:
        return True
    if target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return decodable(stored)
    if target in COMPRESSED_TARGETS:
        try:
            available = bool(get_encoder(UID(target)).is_available)
        except (NotImplementedError, ValueError):
            return False
        return available and decodable(stored)
    return False


def reencode(source: Path | BinaryIO, target: str) -> bytes:
    """The Part 10 file ``source`` (a path or a file open at its start) re-encoded in ``target``:
    its pixel data decoded, and encoded again for a compressed target; every UID kept."""
    ds = dcmread(source)
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    if target in COMPRESSED_TARGETS:
        ds.compress(UID(target), generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def location_of(request: ConversionRequest) -> InstanceLocation:
    """Where the requested instance is stored; ``ConversionFailed`` when the request's identifiers
    are not valid or disagree with its file path."""
    try:
        location = InstanceLocation(
            TenantId(request.tenant_id), Uid(request.study_uid), Uid(request.series_uid), Uid(request.sop_uid)
        )
    except PacsflowError as exc:
        raise ConversionFailed(f"the request names no valid instance: {exc}") from exc
    if str(location.relative) != request.file_path:
        raise ConversionFailed(f"file_path {request.file_path!r} is not where the request's UIDs say")
    return location


def convert(layout: StorageLayout, request: ConversionRequest) -> Converted:
    """Write the requested instance's converted copy durably and describe it.

    Raises ``ConversionFailed`` when the instance cannot be converted (the original is untouched,
    and a copy written before stays as it was), ``StorageUnavailable`` when the storage cannot be
    read and ``StorageError`` when the copy cannot be written: those are the storage's state, and
    the caller waits for it rather than judging the instance.
    """
    location = location_of(request)
    source = layout.instance_path(location)
    if not decodable(request.source_ts):
        raise ConversionFailed(
            f"no codec installed here decodes {syntax_name(request.source_ts)}: the instance is served as "
            "stored; a pydicom pixel-data plugin for it would let it be converted"
        )
    try:
        data = reencode(source, request.target_ts)
    except OSError as exc:
        # The kernel's errors carry an errno; pydicom's own OSErrors about a file's content do not.
        if exc.errno == errno.ENOENT and layout.root.is_dir():
            raise ConversionFailed(f"the file is missing: {source}") from exc
        if exc.errno is not None:
            raise StorageUnavailable(f"the storage is not readable: {exc}") from exc
        raise ConversionFailed(_cannot(request, exc)) from exc
    except Exception as exc:  # whatever the codecs raise about this file's pixel data
        raise ConversionFailed(_cannot(request, exc)) from exc
    # Located in the bytes about to be written, as the index locates a stored file's: the offsets
    # are the file's, and the copy need not be read back.
    index = frames.frame_index(dcmread(io.BytesIO(data), defer_size=_HEADER_DEFER_BYTES))
    target = layout.converted_path(location)
    size = write_atomic(target, [data])
    return Converted(target, request.target_ts, index, size)


def _cannot(request: ConversionRequest, exc: BaseException) -> str:
    return (
        f"cannot convert from {syntax_name(request.source_ts)} to {syntax_name(request.target_ts)}: "
        f"{type(exc).__name__}: {exc}"
    )


def syntax_name(syntax: str) -> str:
    """A transfer syntax as people read it: its name and UID (the UID alone when pydicom has no name)."""
    name = UID(syntax).name
    return f"{name} ({syntax})" if name != syntax else syntax
