"""The Accept header of WADO-RS requests (``egress.wado.accept``), as viewers really send it."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from egress.wado.accept import ANY_SYNTAX, MediaRange, parse, syntax_name

ANYTHING = MediaRange("*/*", ANY_SYNTAX, True, 1.0)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_accept_is_anything_in_any_syntax(header: str | None) -> None:
    assert parse(header) == [ANYTHING]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # OHIF: unquoted. dicomweb-client: the same, quoted.
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            MediaRange("application/octet-stream", "*", True, 1.0),
        ),
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            MediaRange("application/octet-stream", "*", True, 1.0),
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax="{ExplicitVRLittleEndian}"',
            MediaRange("application/dicom", ExplicitVRLittleEndian, True, 1.0),
        ),
        # No transfer-syntax: the standard's default applies later, not "any".
        ("multipart/related; type=application/dicom", MediaRange("application/dicom", None, True, 1.0)),
        # No type: anything, in any syntax.
        ("multipart/related", MediaRange("*/*", ANY_SYNTAX, True, 1.0)),
        ("*/*", ANYTHING),
        # A single part, not multipart.
        ("image/jpeg", MediaRange("image/jpeg", None, False, 1.0)),
        (
            f"application/octet-stream; transfer-syntax={JPEGLSLossless}",
            MediaRange("application/octet-stream", JPEGLSLossless, False, 1.0),
        ),
        # Names are case-insensitive; spaces around the pieces are layout.
        (
            "  Multipart/Related ;  Type = Application/DICOM ; Transfer-Syntax = * ",
            MediaRange("application/dicom", "*", True, 1.0),
        ),
        # Old spellings become the registered ones.
        ("image/x-dicom-rle", MediaRange("image/dicom-rle", None, False, 1.0)),
        ("multipart/related; type=image/jpx", MediaRange("image/jp2", None, True, 1.0)),
    ],
)
def test_one_range(header: str, expected: MediaRange) -> None:
    assert parse(header) == [expected]


def test_ranges_come_most_preferred_first_and_in_order_among_equals() -> None:
    ranges = parse("image/jpeg;q=0.5, image/png, image/gif;q=0.9, image/webp")
    assert [r.media_type for r in ranges] == ["image/png", "image/webp", "image/gif", "image/jpeg"]
    assert [r.q for r in ranges] == [1.0, 1.0, 0.9, 0.5]


def test_refused_and_unreadable_weights_drop_the_range() -> None:
    assert [r.media_type for r in parse("image/jpeg;q=0, image/png;q=abc, image/gif;q=-1, */*;q=0.1")] == [
        "*/*"
    ]
    assert parse("image/jpeg;q=0") == []  # nothing acceptable: the caller answers 406


def test_a_comma_inside_quotes_does_not_split_ranges() -> None:
    ranges = parse('multipart/related; type="application/dicom,x"; transfer-syntax=*, image/png;q=0.2')
    assert [r.media_type for r in ranges] == ["application/dicom,x", "image/png"]


def test_syntax_names_for_messages() -> None:
    assert syntax_name(ExplicitVRLittleEndian) == f"Explicit VR Little Endian ({ExplicitVRLittleEndian})"
    assert syntax_name("1.2.3.4") == "1.2.3.4"  # unknown: the UID alone
