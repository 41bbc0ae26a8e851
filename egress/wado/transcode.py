"""Sending an instance or a frame in a transfer syntax it is not stored in, where the installed codecs
can: which targets are offered, and frames decoded one at a time. Re-encoding itself is
``pipeline.conversion.reencode``, the one way pacsflow converts an instance.

Only lossless targets are offered: a viewer that asks for a syntax must get the same pixels.
These functions block (they decode whole images): the web server calls them in a thread.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.pixels.utils import pixel_array

# Which targets can be offered is decided where every conversion is (the SCP's C-GET and C-MOVE
# decide the same way): re-exported for the web server's callers.
from pipeline.conversion import can_transcode

__all__ = ["can_transcode", "decode_frame"]


def decode_frame(path: Path, number: int) -> bytes:
    """Frame ``number`` (from 1) as native little-endian pixels."""
    return bytes(pixel_array(path, index=number - 1).tobytes())
