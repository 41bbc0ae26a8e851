"""Every usual transfer syntax is accepted and stored exactly as received, and for each presentation
context the SCP accepts the first syntax the modality proposed that it can store (the modality then
sends its data as it has it, never converted to a syntax the SCP happened to prefer)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
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
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    XRayAngiographicImageStorage,
)

from tests.conftest import Scp
from tests.support import dicomdata
from tests.support.dicomdata import dataset_bytes, uid
from tests.support.dimse import dcmtk_status_ok, require_dcmtk, store_one, storescu
from tests.support.dimse_syntax import accepted_syntaxes, jpeg_ls_instance, store_proposing

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
    stored = _stored(scp, ds)
    assert dataset_bytes(stored) == dataset_bytes(source)
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == syntax
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def _stored(scp: Scp, ds: Dataset) -> Path:
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    path: Path = scp.storage_root / "default" / study / series / f"{ds.SOPInstanceUID}.dcm"
    return path


def _assert_stored_as_sent(scp: Scp, ds: Dataset, source: Path) -> None:
    stored = _stored(scp, ds)
    assert stored.exists(), f"{ds.SOPInstanceUID} was not stored"
    assert (
        dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    )
    assert dataset_bytes(stored) == dataset_bytes(source)


def test_dcmtk_own_context_keeps_every_files_syntax(
    scp: Scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`storescu -xt` proposes JPEG-LS alone and the uncompressed syntaxes (Explicit VR Little
    Endian first) together in a second context: each file goes through the context of its syntax."""
    require_dcmtk()
    monkeypatch.setenv("TCP_NODELAY", "1")  # dcmtk reads it: no Nagle delay on small PDUs
    run = uuid.uuid4().int % 10**12
    compressed = jpeg_ls_instance(uid(run, 1), uid(run, 1, 1), 1)
    plain = dicomdata.ct_series(uid(run, 1), uid(run, 1, 2), 1)[0]
    sources = [
        dicomdata.write(compressed, tmp_path / "jls.dcm"),
        dicomdata.write(plain, tmp_path / "ele.dcm"),
    ]

    result = storescu(scp.port, sources, extra=["-xt"])

    assert dcmtk_status_ok(result), result.stderr
    _assert_stored_as_sent(scp, compressed, sources[0])
    _assert_stored_as_sent(scp, plain, sources[1])  # not turned into Implicit VR by dcmtk


def test_dcmtk_combined_context_keeps_jpeg_ls(
    scp: Scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`storescu -xt +C` proposes JPEG-LS, then the uncompressed syntaxes, in one context."""
    require_dcmtk()
    monkeypatch.setenv("TCP_NODELAY", "1")
    run = uuid.uuid4().int % 10**12
    ds = jpeg_ls_instance(uid(run, 1), uid(run, 1, 1), 1)
    source = dicomdata.write(ds, tmp_path / "jls.dcm")

    result = storescu(scp.port, [source], extra=["-xt", "+C"])

    assert dcmtk_status_ok(result), result.stderr
    _assert_stored_as_sent(scp, ds, source)


def test_pynetdicom_jpeg_ls_first_in_one_context(scp: Scp, tmp_path: Path) -> None:
    run = uuid.uuid4().int % 10**12
    ds = jpeg_ls_instance(uid(run, 1), uid(run, 1, 1), 1)
    source = dicomdata.write(ds, tmp_path / "jls.dcm")

    status = store_proposing(scp.port, source, [JPEGLSLossless, ExplicitVRLittleEndian])

    assert status.Status == 0x0000
    _assert_stored_as_sent(scp, ds, source)


def test_uncompressed_first_means_the_modality_sends_uncompressed(scp: Scp, tmp_path: Path) -> None:
    """Proposing Explicit VR Little Endian before JPEG-LS says "I would rather send it
    uncompressed": Explicit is accepted, so pynetdicom will not send a JPEG-LS dataset over it
    (the SCU must decode it), and what it does send is kept as it was sent."""
    run = uuid.uuid4().int % 10**12
    compressed = jpeg_ls_instance(uid(run, 1), uid(run, 1, 1), 1)
    plain = dicomdata.ct_series(uid(run, 1), uid(run, 1, 2), 1)[0]
    proposal = [ExplicitVRLittleEndian, JPEGLSLossless]
    compressed_source = dicomdata.write(compressed, tmp_path / "jls.dcm")
    plain_source = dicomdata.write(plain, tmp_path / "ele.dcm")

    assert accepted_syntaxes(scp.port, [(CTImageStorage, proposal)]) == [ExplicitVRLittleEndian]
    with pytest.raises(ValueError, match="No presentation context"):
        store_proposing(scp.port, compressed_source, proposal)
    assert store_proposing(scp.port, plain_source, proposal).Status == 0x0000
    _assert_stored_as_sent(scp, plain, plain_source)
    assert not _stored(scp, compressed).exists()


UNKNOWN_SYNTAX = uid(99, 1)  # a private transfer syntax pacsflow cannot read

# name: (proposed contexts, each (SOP class, syntaxes in proposal order); expected accepted per context)
# Each case has SOP classes of its own: negotiation is per SOP class, so the cases share one association.
ORDER_RULE: dict[str, tuple[list[tuple[str, Sequence[str]]], list[str | None]]] = {
    "compressed first": (
        [(CTImageStorage, [JPEGLSLossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian])],
        [JPEGLSLossless],
    ),
    "uncompressed first": (
        [(MRImageStorage, [ExplicitVRLittleEndian, JPEGLSLossless])],
        [ExplicitVRLittleEndian],
    ),
    "explicit before implicit": (
        [(UltrasoundImageStorage, [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian])],
        [ExplicitVRLittleEndian],
    ),
    "implicit first": (
        [(SecondaryCaptureImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])],
        [ImplicitVRLittleEndian],
    ),
    "first that can be stored": (
        [(XRayAngiographicImageStorage, [UNKNOWN_SYNTAX, JPEG2000Lossless, ExplicitVRLittleEndian])],
        [JPEG2000Lossless],
    ),
    "nothing that can be stored": ([(NuclearMedicineImageStorage, [UNKNOWN_SYNTAX])], [None]),
    "each context its own first": (
        [
            (DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]),
            (DigitalXRayImageStorageForPresentation, [JPEGLSLossless, ExplicitVRLittleEndian]),
            (
                DigitalXRayImageStorageForPresentation,
                [RLELossless, ImplicitVRLittleEndian, ExplicitVRLittleEndian],
            ),
        ],
        [ExplicitVRLittleEndian, JPEGLSLossless, RLELossless],
    ),
    # One SOP class listing A before B in one context and B before A in another asks for what
    # pynetdicom cannot give (one order per SOP class and association): the earlier context wins.
    "contradicting contexts": (
        [
            (PositronEmissionTomographyImageStorage, [JPEGLSLossless, ExplicitVRLittleEndian]),
            (PositronEmissionTomographyImageStorage, [ExplicitVRLittleEndian, JPEGLSLossless]),
        ],
        [JPEGLSLossless, JPEGLSLossless],
    ),
}


def test_each_context_gets_its_first_proposed_syntax_that_can_be_stored(scp: Scp) -> None:
    proposals = [proposal for contexts, _ in ORDER_RULE.values() for proposal in contexts]

    accepted = iter(accepted_syntaxes(scp.port, proposals))

    got = {name: [_name(next(accepted)) for _ in contexts] for name, (contexts, _) in ORDER_RULE.items()}
    assert got == {name: [_name(syntax) for syntax in expected] for name, (_, expected) in ORDER_RULE.items()}


def _name(syntax: str | None) -> str | None:
    return UID(syntax).name if syntax else None
