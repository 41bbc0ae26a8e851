"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.4): one frame as JPEG or PNG.

A frame is decoded on its own (pydicom's ``pixel_array`` with ``index``), so rendering frame 3 of a
500 MB multi-frame instance reads that frame, not the file. Grayscale goes through the Modality LUT
and then one VOI window (the request's, else the header's first, else the frame's own range) to
8 bits; colour is shown as stored unless a window is asked for. The window formulas are PS3.3
C.11.2.1.2 and C.11.2.1.3 with an 8-bit output range, written here rather than taken from pydicom's
``apply_windowing``: that one maps into the stored value range, which would need a second rescale.

The route handlers parse the query with ``RenderOptions.parse``, pick the media type with
``choose_media_type`` and call ``render`` in a thread: it is CPU work on blocking file reads.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from egress.wado.errors import BadRequest, NotFound
from egress.wado.numbers import whole
from pipeline.errors import PacsflowError

MEDIA_TYPES = ("image/jpeg", "image/png")
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
THUMBNAIL_VIEWPORT = (128, 128)
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 10000

# PS3.18 8.3.5.1.1: we draw no annotations, which the standard allows ("may"), so asking is harmless.
_ANNOTATIONS = frozenset({"patient", "technique"})
# Accept and charset only steer content negotiation, which the route does with choose_media_type.
_IGNORED_KEYS = frozenset({"accept", "charset"})
_KNOWN_KEYS = frozenset({"window", "viewport", "quality", "annotation"}) | _IGNORED_KEYS
_HEADER_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}
_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Enhanced multi-frame instances keep rescale and window per frame, not at the top level.
_FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")

Pixels = npt.NDArray[Any]
Window = tuple[float, float, str]


class RenderError(PacsflowError):
    """The frame cannot be decoded here: no decoder for its transfer syntax is installed."""


@dataclass(frozen=True)
class RenderOptions:
    """The query parameters of a rendered or thumbnail request (PS3.18 8.3.5.1), validated."""

    window: Window | None = None  # centre, width, function
    viewport: tuple[int, int] | None = None  # the largest width and height to fit the frame in
    quality: int = DEFAULT_QUALITY  # JPEG only

    @classmethod
    def parse(cls, query: Mapping[str, str], *, thumbnail: bool = False) -> RenderOptions:
        unknown = sorted(set(query) - _KNOWN_KEYS)
        if unknown:
            raise BadRequest(
                f"unsupported query parameter {', '.join(unknown)}; "
                f"rendered resources take {', '.join(sorted(_KNOWN_KEYS))}"
            )
        if "annotation" in query:
            _check_annotation(query["annotation"])
        viewport = _viewport(query["viewport"]) if "viewport" in query else None
        return cls(
            window=_window(query["window"]) if "window" in query else None,
            viewport=viewport or (THUMBNAIL_VIEWPORT if thumbnail else None),
            quality=_quality(query["quality"]) if "quality" in query else DEFAULT_QUALITY,
        )


def _check_annotation(value: str) -> None:
    for item in value.split(","):
        if item.strip().lower() not in _ANNOTATIONS:
            raise BadRequest(f"annotation must be patient and/or technique; got {value!r}")


def _window(value: str) -> Window:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) not in (2, 3):
        raise BadRequest(f"window must be center,width,function; got {value!r}")
    centre, width = _finite(parts[0], "window center"), _finite(parts[1], "window width")
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise BadRequest(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}; got {parts[2]!r}")
    if width <= 0:
        raise BadRequest(f"window width must be greater than 0; got {parts[1]!r}")
    if function == "linear" and width < 1:
        # PS3.3 C.11.2.1.2.1: the linear function's width is at least 1 (it divides by width - 1).
        raise BadRequest(f"window width must be at least 1 for the linear function; got {parts[1]!r}")
    return centre, width, function


def _finite(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise BadRequest(f"{what} must be a number; got {text!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{what} must be a finite number; got {text!r}")
    return number


def _viewport(value: str) -> tuple[int, int]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) == 6:
        # The source region would need a crop the options cannot carry; refusing beats ignoring it.
        raise BadRequest("viewport source region (sx,sy,sw,sh) is not supported; send viewport=vw,vh")
    if len(parts) != 2:
        raise BadRequest(f"viewport must be vw,vh; got {value!r}")
    width, height = (_bounded_int(part, "viewport size", 1, MAX_VIEWPORT) for part in parts)
    return width, height


def _quality(value: str) -> int:
    return _bounded_int(value.strip(), "quality", 1, 100)


def _bounded_int(text: str, what: str, low: int, high: int) -> int:
    number = whole(text)
    if number is None:
        raise BadRequest(f"{what} must be a whole number from {low} to {high}; got {text!r}")
    if not low <= number <= high:
        raise BadRequest(f"{what} must be from {low} to {high}; got {number}")
    return number


def choose_media_type(accept: str | None) -> str | None:
    """The media type to render to for an ``Accept`` header; None when we offer nothing it accepts.

    Each of ours takes the q-value of the most specific range that matches it (RFC 9110 12.5.1);
    among equal q-values the range listed first wins, and JPEG when one range covers both.
    """
    if accept is None or not accept.strip():
        return MEDIA_TYPES[0]
    ranges = [parsed for item in accept.split(",") if (parsed := _media_range(item)) is not None]
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for preference, media_type in enumerate(MEDIA_TYPES):
        match = _best_match(media_type, ranges)
        if match is None or match[0] <= 0:
            continue
        rank = (match[0], -match[1], -preference)
        if best is None or rank > best:
            best, chosen = rank, media_type
    return chosen


def _media_range(item: str) -> tuple[str, float] | None:
    """``type/subtype`` (lower case) and its q-value; None for an empty or malformed item."""
    name, *parameters = (part.strip() for part in item.split(";"))
    if name.count("/") != 1:
        return None
    q = 1.0
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            break  # parameters after q are accept-extensions, not ours
    return name.lower(), q if 0 <= q <= 1 else 0.0


def _best_match(media_type: str, ranges: list[tuple[str, float]]) -> tuple[float, int] | None:
    """The q-value and position of the most specific range covering ``media_type``."""
    kind = media_type.split("/")[0]
    for pattern in (media_type, f"{kind}/*", "*/*"):
        for position, (name, q) in enumerate(ranges):
            if name == pattern:
                return q, position
    return None


def render(path: Path, frame: int, options: RenderOptions, media_type: str) -> bytes:
    """Frame ``frame`` (from 1) of the instance at ``path``, rendered to ``media_type``."""
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render to {media_type}; choose one of {', '.join(MEDIA_TYPES)}")
    header, pixels = _read_frame(path, frame)
    image = Image.fromarray(_displayable(header, pixels, options.window))
    if options.viewport is not None:
        # Fits inside the viewport, keeps the aspect ratio and never enlarges.
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    return _encoded(image, media_type, options.quality)


def _read_frame(path: Path, frame: int) -> tuple[Dataset, Pixels]:
    """The header as frame ``frame`` sees it (without pixel data) and that frame decoded."""
    if frame < 1:
        raise BadRequest(f"frame numbers start at 1; got {frame}")
    with path.open("rb") as file:
        header = dcmread(file, stop_before_pixels=True)
        syntax = UID(header.file_meta.TransferSyntaxUID)
        if syntax == DeflatedExplicitVRLittleEndian:
            # pixel_array reads a file's dataset as stored; a deflated one must be inflated first.
            whole = dcmread(path)
            _check_frame(whole, frame, has_pixels=not _PIXEL_DATA_TAGS.isdisjoint(whole.keys()))
            return _with_frame_groups(whole, frame - 1), pixel_array(whole, index=frame - 1)
        # dcmread stops at the pixel data element and leaves the file there; at its end if none.
        _check_frame(
            header, frame, has_pixels=_at_pixel_data(file, little_endian=header.original_encoding[1])
        )
        _check_decoder(syntax)
        return _with_frame_groups(header, frame - 1), pixel_array(file, index=frame - 1)


def _at_pixel_data(file: BinaryIO, *, little_endian: bool | None) -> bool:
    tag = file.read(4)
    if len(tag) < 4:
        return False
    group, element = struct.unpack(">HH" if little_endian is False else "<HH", tag)
    return (group << 16 | element) in _PIXEL_DATA_TAGS


def _check_frame(header: Dataset, frame: int, *, has_pixels: bool) -> None:
    if not has_pixels:
        raise BadRequest("instance has no pixel data to render")
    frames = max(int(header.get("NumberOfFrames") or 1), 1)
    if frame > frames:
        raise NotFound(f"no frame {frame}: the instance has {frames} frame{'s' if frames > 1 else ''}")


def _check_decoder(syntax: UID) -> None:
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise RenderError(
            f"no decoder exists for {syntax.name} ({syntax}) pixel data in this pydicom version"
        ) from None
    if not decoder.is_available:
        raise RenderError(
            f"cannot decode {syntax.name} ({syntax}) pixel data: no decoder plugin is installed; "
            f"install one of: {'; '.join(decoder.missing_dependencies)}"
        )


def _displayable(header: Dataset, pixels: Pixels, window: Window | None) -> npt.NDArray[np.uint8]:
    """8-bit values for Pillow: rows x columns (grayscale) or rows x columns x 3 (RGB)."""
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return _colour(apply_color_lut(pixels, header)[..., :3], window, bits=None)
    if pixels.ndim == 3:
        # pydicom has converted YBR to RGB already.
        return _colour(pixels, window, bits=int(header.get("BitsStored") or pixels.itemsize * 8))
    return _grayscale(header, pixels, window, inverted=photometric == "MONOCHROME1")


def _grayscale(
    header: Dataset, pixels: Pixels, window: Window | None, *, inverted: bool
) -> npt.NDArray[np.uint8]:
    values = apply_modality_lut(pixels, header)
    window = window or _header_window(header)
    shown = _windowed(values, window) if window else _stretched(values)
    return 255 - shown if inverted else shown


def _with_frame_groups(header: Dataset, index: int) -> Dataset:
    """``header`` with its functional groups' rescale and window at the top level, as pydicom's
    Modality LUT and our window look for them: shared groups first, the frame's own over them."""
    shared = list(header.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = list(header.get("PerFrameFunctionalGroupsSequence") or [])[index : index + 1]
    for item in shared + per_frame:
        for group in _FRAME_GROUPS:
            if item.get(group):
                header.update(item[group][0])
    return header


def _header_window(header: Dataset) -> Window | None:
    """The header's first window, if it is one we can apply; a bad one is ignored, not an error."""
    centre, width = _first(header.get("WindowCenter")), _first(header.get("WindowWidth"))
    if centre is None or width is None:
        return None
    function = _HEADER_FUNCTIONS.get(str(header.get("VOILUTFunction") or "LINEAR").strip().upper(), "linear")
    if width <= 0 or (function == "linear" and width < 1):
        return None
    return centre, width, function


def _first(value: object) -> float | None:
    if isinstance(value, MultiValue):
        value = value[0] if value else None
    if not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _windowed(values: Pixels, window: Window) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2.1 (linear), C.11.2.1.3.2 (linear exact), C.11.2.1.3.1 (sigmoid) to 0..255."""
    centre, width, function = window
    values = values.astype(np.float64)
    if function == "sigmoid":
        # 1 / (1 + exp(-z)) written with tanh, which cannot overflow for far-off values.
        out = 127.5 * (1.0 + np.tanh(2.0 * (values - centre) / width))
    elif function == "linear-exact":
        out = ((values - centre) / width + 0.5) * 255.0
    elif width > 1:
        out = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    else:
        out = np.where(values > centre - 0.5, 255.0, 0.0)  # width 1: a threshold
    return _to_uint8(out)


def _stretched(values: Pixels) -> npt.NDArray[np.uint8]:
    """The frame's own minimum to maximum over 0..255, when nothing says what to show."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _to_uint8((values.astype(np.float64) - low) * (255.0 / (high - low)))


def _colour(pixels: Pixels, window: Window | None, *, bits: int | None) -> npt.NDArray[np.uint8]:
    """RGB as stored, scaled from ``bits`` (or the array's type) to 8; windowed only on request."""
    if window:
        return _windowed(pixels, window)
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    top = 2**bits - 1 if bits else np.iinfo(pixels.dtype).max
    return _to_uint8(pixels.astype(np.float64) * (255.0 / top))


def _to_uint8(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)


def _encoded(image: Image.Image, media_type: str, quality: int) -> bytes:
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()
