"""Sending an instance or a frame in a transfer syntax it is not stored in, where the installed codecs
can (pydicom's pixel handlers: pylibjpeg with libjpeg and openjpeg, pyjpegls, its own RLE).

Only lossless targets are offered: a viewer that asks for a syntax must get the same pixels.
These functions block (they decode whole images): the web server calls them in a thread.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from egress.wado.accept import NATIVE

_NATIVE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_COMPRESSED_TARGETS = (RLELossless, JPEGLSLossless, JPEG2000Lossless)


def decodable(stored: str) -> bool:
    """Whether pixel data stored in ``stored`` can be decoded here."""
    if stored in NATIVE:
        return True
    try:
        return bool(get_decoder(UID(stored)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored: str, target: str) -> bool:
    if target == stored:
        return True
    if target in _NATIVE_TARGETS:
        return decodable(stored)
    if target in _COMPRESSED_TARGETS:
        try:
            available = bool(get_encoder(UID(target)).is_available)
        except (NotImplementedError, ValueError):
            return False
        return available and decodable(stored)
    return False


def transcode(source: Path | BinaryIO, target: str) -> bytes:
    """The Part 10 file ``source`` (a path or a file open at its start) re-encoded in ``target``
    (its pixel data decoded, and encoded again for a compressed target)."""
    ds = dcmread(source)
    # The same instance in another encoding keeps its SOP Instance UID: pydicom would make a new
    # one by default.
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    if target in _COMPRESSED_TARGETS:
        ds.compress(UID(target), generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def decode_frame(path: Path, number: int) -> bytes:
    """Frame ``number`` (from 1) as native little-endian pixels."""
    return bytes(pixel_array(path, index=number - 1).tobytes())
