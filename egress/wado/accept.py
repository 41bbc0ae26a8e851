"""The Accept header of WADO-RS requests (PS3.18 8.7): media ranges, their type and transfer syntax.

Viewers send every spelling: OHIF ``multipart/related; type=application/octet-stream;
transfer-syntax=*`` unquoted, dicomweb-client the same quoted, others ``*/*`` or nothing at all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pipeline.conversion import NATIVE, syntax_name

__all__ = ["ANY_SYNTAX", "IMAGE_MEDIA_TYPES", "NATIVE", "MediaRange", "parse", "syntax_name"]

ANY_SYNTAX = "*"

# Single-frame media types of compressed pixel data (PS3.18 Table 8.7.3-2).
IMAGE_MEDIA_TYPES: dict[str, str] = {
    JPEGBaseline8Bit: "image/jpeg",
    JPEGExtended12Bit: "image/jpeg",
    JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    HTJ2KLossless: "image/jphc",
    HTJ2KLosslessRPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLELossless: "image/dicom-rle",
}
_MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/jpx": "image/jp2"}


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    """``multipart/related`` ranges are unwrapped: this is their ``type`` (or ``*/*``)."""
    transfer_syntax: str | None
    multipart: bool
    q: float


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for piece in text.split(";")[1:]:
        name, _, value = piece.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').strip()
    return params


def _split(header: str) -> list[str]:
    """Media ranges, splitting at commas outside quotes (a quoted ``type`` may hold ``;``)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse(header: str | None) -> list[MediaRange]:
    """The ranges of ``header``, most preferred first; ``*/*`` when there is none."""
    return list(_parsed(header))


@functools.lru_cache(maxsize=128)
def _parsed(header: str | None) -> tuple[MediaRange, ...]:
    # A viewer sends the same few headers on every request: each is parsed once.
    if not header or not header.strip():
        return (MediaRange("*/*", ANY_SYNTAX, True, 1.0),)
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, text in enumerate(_split(header)):
        params = _params(text)
        base = text.split(";")[0].strip().lower()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q <= 0:
            continue
        multipart = base == "multipart/related"
        media = params.get("type", "*/*").lower() if multipart else base
        media = _MEDIA_ALIASES.get(media, media)
        syntax = params.get("transfer-syntax")
        if media in ("*/*", "multipart/*") and syntax is None:
            syntax = ANY_SYNTAX
        ranges.append((-q, position, MediaRange(media, syntax, multipart or base == "*/*", q)))
    return tuple(r for _, _, r in sorted(ranges, key=lambda item: (item[0], item[1])))
