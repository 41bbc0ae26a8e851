"""Rendered and thumbnail frames: real files made with pydicom, rendered, and decoded back with Pillow."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from egress.wado.errors import BadRequest, NotFound
from egress.wado.rendering import RenderError, RenderOptions, choose_media_type, render
from tests.support import dicomdata

HEADER_WINDOW = (40.0, 400.0)  # soft tissue, in HU
JPEG_SIGNATURE, PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# Not a syntax pydicom 3.0 can decode: what a missing decoder looks like without faking one.
JPEG_XL_LOSSLESS = UID("1.2.840.10008.1.2.4.110")


def stored(hu: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """Stored values for Hounsfield units under the test images' rescale (slope 1, intercept -1024)."""
    return (np.asarray(hu, dtype=np.int32) + 1024).astype(np.uint16)


def instance(
    pixels: npt.NDArray[np.generic],
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple[float, float] | None = HEADER_WINDOW,
    sop_class: str = CTImageStorage,
) -> Dataset:
    """A CT-like instance holding ``pixels``: (rows, columns), (frames, rows, columns) or RGB."""
    ds = dicomdata.image(sop_class, dicomdata.uid(7), dicomdata.uid(7, 1), dicomdata.uid(7, 1, 1), 1)
    del ds.PixelData
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    if photometric.startswith("MONOCHROME"):
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    else:
        del ds.RescaleSlope, ds.RescaleIntercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    return ds


def saved(ds: Dataset, tmp_path: Path, name: str = "instance.dcm") -> Path:
    return dicomdata.write(ds, tmp_path / name)


def decoded(body: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(body)))


def png(path: Path, frame: int = 1, **options: object) -> npt.NDArray[np.uint8]:
    return decoded(render(path, frame, RenderOptions(**options), "image/png"))  # type: ignore[arg-type]


def ct_probe() -> npt.NDArray[np.uint16]:
    """Far below, at the centre of and far above the header window, and the window's edges."""
    return stored([[-1000, 40, 1000, -161], [-160, 240, 200, 40]])


# --- windowing ---------------------------------------------------------------------------------


def test_header_window_maps_its_centre_to_middle_grey(tmp_path: Path) -> None:
    shown = png(saved(instance(ct_probe()), tmp_path))
    assert shown.dtype == np.uint8 and shown.shape == (2, 4)
    assert shown[0, 0] == 0 and shown[0, 2] == 255
    assert abs(int(shown[0, 1]) - 128) <= 1
    # PS3.3 C.11.2.1.2.1 for centre 40, width 400: at most -160 HU is black, above 239.5 HU white.
    assert shown[0, 3] == 0 and shown[1, 0] == 0
    assert shown[1, 1] == 255 and shown[1, 2] == 230  # ((200 - 39.5) / 399 + 0.5) * 255 = 230.08


def test_requested_window_overrides_the_header(tmp_path: Path) -> None:
    path = saved(instance(stored([[40, 1000, 1500]])), tmp_path)
    shown = png(path, window=(1000.0, 400.0, "linear"))
    assert shown[0, 0] == 0 and shown[0, 2] == 255
    assert abs(int(shown[0, 1]) - 128) <= 1


@pytest.mark.parametrize("function", ["sigmoid", "linear-exact"])
def test_other_window_functions_centre_on_middle_grey(tmp_path: Path, function: str) -> None:
    path = saved(instance(stored([[-1000, 0, 40, 80, 1000]])), tmp_path)
    shown = png(path, window=(40.0, 400.0, function)).astype(int)
    assert shown[0, 0] < 5 and shown[0, 4] > 250
    assert abs(shown[0, 2] - 128) <= 1
    assert shown[0, 1] < shown[0, 2] < shown[0, 3]


def test_header_voi_lut_function_is_honoured(tmp_path: Path) -> None:
    linear, sigmoid = instance(stored([[0, 100]])), instance(stored([[0, 100]]))
    sigmoid.VOILUTFunction = "SIGMOID"
    shown_linear = png(saved(linear, tmp_path, "linear.dcm"))
    shown_sigmoid = png(saved(sigmoid, tmp_path, "sigmoid.dcm"))
    assert shown_sigmoid[0, 1] == png(saved(sigmoid, tmp_path), window=(40.0, 400.0, "sigmoid"))[0, 1]
    assert shown_linear[0, 1] != shown_sigmoid[0, 1]


def test_without_a_window_the_frame_range_is_stretched(tmp_path: Path) -> None:
    path = saved(instance(stored([[-100, -50, 100]]), window=None), tmp_path)
    assert png(path).tolist() == [[0, 64, 255]]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    normal = png(saved(instance(ct_probe()), tmp_path, "mono2.dcm"))
    inverted = png(saved(instance(ct_probe(), photometric="MONOCHROME1"), tmp_path, "mono1.dcm"))
    assert (inverted == 255 - normal).all()


def test_rgb_is_shown_as_stored(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ds = instance(rgb, photometric="RGB", bits_stored=8, window=None, sop_class=SecondaryCaptureImageStorage)
    shown = png(saved(ds, tmp_path))
    assert shown.shape == (16, 24, 3)
    assert (shown == rgb).all()


def test_palette_colour_goes_through_its_lookup_table(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    ds = instance(indices, photometric="PALETTE COLOR", bits_stored=8, window=None)
    ramp = np.arange(256, dtype="<u2") * 257  # 16-bit entries: index i shows as i
    for colour, table in (("Red", ramp), ("Green", ramp[::-1].copy()), ("Blue", np.zeros(256, "<u2"))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    shown = png(saved(ds, tmp_path))
    assert shown[0].tolist() == [[0, 255, 0], [1, 254, 0], [2, 253, 0], [255, 0, 0]]


# --- frames ------------------------------------------------------------------------------------


def three_frames() -> npt.NDArray[np.uint16]:
    """Frame 1 below the header window, frame 2 at its centre, frame 3 above; one marked pixel each."""
    frames = stored(np.array([-1000, 40, 1000])[:, None, None] * np.ones((3, 8, 8), dtype=np.int32))
    frames[:, 0, 0] = stored(40)
    return frames


def test_each_frame_renders_its_own_pixels(tmp_path: Path) -> None:
    path = saved(instance(three_frames()), tmp_path)
    first, second, third = (png(path, frame) for frame in (1, 2, 3))
    assert (first[1:, 1:] == 0).all() and (third[1:, 1:] == 255).all()
    assert abs(int(second[4, 4]) - 128) <= 1
    assert first[0, 0] == second[0, 0] == third[0, 0]


def test_a_frame_beyond_the_count_is_not_found(tmp_path: Path) -> None:
    path = saved(instance(three_frames()), tmp_path)
    with pytest.raises(NotFound, match="3 frames"):
        render(path, 4, RenderOptions(), "image/png")
    with pytest.raises(NotFound, match=r"has 1 frame$"):
        render(saved(instance(ct_probe()), tmp_path, "single.dcm"), 2, RenderOptions(), "image/png")
    with pytest.raises(BadRequest, match="start at 1"):
        render(path, 0, RenderOptions(), "image/png")


def test_enhanced_instances_take_rescale_and_window_from_functional_groups(tmp_path: Path) -> None:
    ds = instance(three_frames(), window=None, sop_class=EnhancedCTImageStorage)
    del ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    shared.PixelValueTransformationSequence[0].RescaleType = "HU"
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for centre in (40, 40, 1000):  # frame 3 is windowed on its own values
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([Dataset()])
        item.FrameVOILUTSequence[0].WindowCenter, item.FrameVOILUTSequence[0].WindowWidth = centre, 400
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    path = saved(ds, tmp_path)
    assert (png(path, 1)[1:, 1:] == 0).all()
    assert abs(int(png(path, 2)[4, 4]) - 128) <= 1
    assert abs(int(png(path, 3)[4, 4]) - 128) <= 1


# --- size and encoding -------------------------------------------------------------------------


def wide() -> Dataset:
    """256 columns by 128 rows of noise, windowed by the header."""
    return instance(np.random.default_rng(2).integers(0, 2048, (128, 256), dtype=np.uint16))


def test_viewport_fits_the_frame_keeping_its_aspect_ratio(tmp_path: Path) -> None:
    path = saved(wide(), tmp_path)
    assert png(path, viewport=(64, 64)).shape == (32, 64)
    assert png(path, viewport=(1000, 1000)).shape == (128, 256)  # never enlarged
    assert png(path).shape == (128, 256)


def test_thumbnails_default_to_128(tmp_path: Path) -> None:
    options = RenderOptions.parse({}, thumbnail=True)
    assert options.viewport == (128, 128)
    assert decoded(render(saved(wide(), tmp_path), 1, options, "image/jpeg")).shape == (64, 128)


def test_media_types_give_their_formats(tmp_path: Path) -> None:
    path = saved(wide(), tmp_path)
    jpeg, png_body = (render(path, 1, RenderOptions(), kind) for kind in ("image/jpeg", "image/png"))
    assert jpeg.startswith(JPEG_SIGNATURE) and png_body.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(jpeg)).mode == "L"
    with pytest.raises(ValueError, match="image/gif"):
        render(path, 1, RenderOptions(), "image/gif")


def test_quality_changes_the_jpeg_size(tmp_path: Path) -> None:
    path = saved(wide(), tmp_path)
    low, high = (len(render(path, 1, RenderOptions(quality=q), "image/jpeg")) for q in (10, 95))
    assert low < high / 2


# --- stored forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_frames_render_as_the_uncompressed_ones(tmp_path: Path, syntax: str) -> None:
    plain = instance(three_frames() + np.arange(64, dtype=np.uint16).reshape(8, 8))
    compressed = instance(three_frames() + np.arange(64, dtype=np.uint16).reshape(8, 8))
    compressed.compress(syntax, generate_instance_uid=False)
    plain_path, compressed_path = saved(plain, tmp_path, "plain.dcm"), saved(compressed, tmp_path, "c.dcm")
    for frame in (1, 2, 3):
        assert (png(compressed_path, frame) == png(plain_path, frame)).all()


def test_deflated_instances_render(tmp_path: Path) -> None:
    plain = instance(three_frames())
    deflated = instance(three_frames())
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    plain_path, deflated_path = saved(plain, tmp_path, "plain.dcm"), saved(deflated, tmp_path, "d.dcm")
    assert (png(deflated_path, 3) == png(plain_path, 3)).all()
    with pytest.raises(NotFound, match="3 frames"):
        render(deflated_path, 4, RenderOptions(), "image/png")


def test_an_instance_without_pixel_data_is_a_bad_request(tmp_path: Path) -> None:
    ds = instance(ct_probe())
    del ds.PixelData
    with pytest.raises(BadRequest, match="no pixel data to render"):
        render(saved(ds, tmp_path), 1, RenderOptions(), "image/jpeg")


def test_a_syntax_without_a_decoder_is_a_render_error_naming_it(tmp_path: Path) -> None:
    ds = instance(ct_probe())
    ds.PixelData = encapsulate([b"\xff\x0a" + b"\x00" * 14])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG_XL_LOSSLESS
    with pytest.raises(RenderError, match=JPEG_XL_LOSSLESS):
        render(saved(ds, tmp_path), 1, RenderOptions(), "image/jpeg")


# --- query parameters --------------------------------------------------------------------------


def test_parse_reads_every_parameter() -> None:
    query = {"window": " 40, 400 ,Linear-Exact", "viewport": "512,256", "quality": "70"}
    assert RenderOptions.parse(query) == RenderOptions((40.0, 400.0, "linear-exact"), (512, 256), 70)
    assert RenderOptions.parse({"window": "-600,1500"}).window == (-600.0, 1500.0, "linear")
    assert RenderOptions.parse({}) == RenderOptions(None, None, 90)
    assert RenderOptions.parse({"viewport": "64,32"}, thumbnail=True).viewport == (64, 32)


def test_parse_ignores_annotation_accept_and_charset() -> None:
    query = {"annotation": "patient,technique", "accept": "image/png", "charset": "utf-8"}
    assert RenderOptions.parse(query) == RenderOptions()
    assert RenderOptions.parse({"annotation": "Technique"}) == RenderOptions()


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"window": "40"}, "center,width,function"),
        ({"window": "40,400,linear,1"}, "center,width,function"),
        ({"window": ""}, "center,width,function"),
        ({"window": "forty,400,linear"}, "window center must be a number"),
        ({"window": "40,wide,linear"}, "window width must be a number"),
        ({"window": "40,nan,linear"}, "finite"),
        ({"window": "40,0,linear-exact"}, "greater than 0"),
        ({"window": "40,-5,sigmoid"}, "greater than 0"),
        ({"window": "40,0.5,linear"}, "at least 1"),
        ({"window": "40,400,gamma"}, "linear, linear-exact, sigmoid"),
        ({"viewport": "0,64"}, "from 1 to 10000"),
        ({"viewport": "64,-1"}, "from 1 to 10000"),
        ({"viewport": "10001,64"}, "from 1 to 10000"),
        ({"viewport": "64"}, "vw,vh"),
        ({"viewport": "64.5,64"}, "whole number"),
        ({"viewport": "64,64,0,0,32,32"}, "not supported"),
        ({"quality": "0"}, "from 1 to 100"),
        ({"quality": "101"}, "from 1 to 100"),
        ({"quality": "high"}, "whole number"),
        ({"annotation": "patient,ruler"}, "patient and/or technique"),
        ({"annotation": ""}, "patient and/or technique"),
        ({"windows": "40,400"}, "unsupported query parameter windows"),
        ({"rows": "1", "columns": "2"}, "columns, rows"),
    ],
)
def test_parse_refuses_malformed_values(query: Mapping[str, str], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        RenderOptions.parse(query)


# --- content negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "image/jpeg"),
        ("", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("IMAGE/PNG ; charset=x", "image/png"),
        ("image/png, image/jpeg", "image/png"),
        ("image/jpeg, image/png", "image/jpeg"),
        ("image/jpeg;q=0.5, image/png;q=0.9", "image/png"),
        ("image/png;q=0.2, image/*;q=0.5", "image/jpeg"),
        ("image/jpeg;q=0, */*", "image/png"),
        ("image/png, image/*", "image/png"),
        ("text/html, application/xhtml+xml, */*;q=0.8", "image/jpeg"),
        ("image/jpeg;q=0, image/png;q=0", None),
        ("image/gif", None),
        ("application/dicom", None),
        ("image/png;q=oops, image/jpeg;q=0.1", "image/jpeg"),
        ("garbage", None),
    ],
)
def test_choose_media_type(accept: str | None, chosen: str | None) -> None:
    assert choose_media_type(accept) == chosen
