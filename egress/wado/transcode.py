"""Sending an instance or a frame in a transfer syntax it is not stored in, where the installed codecs
can: which targets are offered, and frames decoded one at a time. Re-encoding itself is
``pipeline.conversion.reencode``, the one way pacsflow converts an instance.

Only lossless targets are offered: a viewer that asks for a syntax must get the same pixels.
These functions block (they decode whole images): the web server calls them in a thread.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.conversion import COMPRESSED_TARGETS, decodable

_NATIVE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def can_transcode(stored: str, target: str) -> bool:
    if target == stored:
        return True
    if target in _NATIVE_TARGETS:
        return decodable(stored)
    if target in COMPRESSED_TARGETS:
        try:
            available = bool(get_encoder(UID(target)).is_available)
        except (NotImplementedError, ValueError):
            return False
        return available and decodable(stored)
    return False


def decode_frame(path: Path, number: int) -> bytes:
    """Frame ``number`` (from 1) as native little-endian pixels."""
    return bytes(pixel_array(path, index=number - 1).tobytes())
