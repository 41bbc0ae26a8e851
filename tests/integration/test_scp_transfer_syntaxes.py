"""Every usual transfer syntax is accepted and stored exactly as received."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests.conftest import Scp
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import store_one

pytestmark = pytest.mark.broker

SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.name for s in SYNTAXES])
def test_stored_as_received(scp: Scp, tmp_path: Path, syntax: str) -> None:
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1, transfer_syntax=syntax, frames=3)[0]
    source = dicomdata.write(ds, tmp_path / "in.dcm")

    status = store_one(scp.port, source, syntax)

    assert status.Status == 0x0000
    stored = (
        scp.storage_root / "default" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )
    assert dataset_bytes(stored) == dataset_bytes(source)
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == syntax
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
