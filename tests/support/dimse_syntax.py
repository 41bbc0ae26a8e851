"""Transfer syntax negotiation seen from the modality's side: what the SCP accepted, per context."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, JPEGLSLossless
from pynetdicom import AE, build_context

from tests.support import dicomdata
from tests.support.dimse import store_one

Proposal = tuple[str, Sequence[str]]  # (SOP class, transfer syntaxes in the order proposed)


def accepted_syntaxes(port: int, proposals: Sequence[Proposal]) -> list[str | None]:
    """Propose ``proposals`` as presentation contexts 1, 3, 5, ... of one association; return the
    transfer syntax the SCP accepted for each, None where it rejected the context."""
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in proposals]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSFLOW")
    assert assoc.is_established, "association was not accepted"
    try:
        accepted = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    return [accepted.get(2 * n + 1) for n in range(len(proposals))]


def store_proposing(port: int, path: Path, syntaxes: Sequence[str]) -> Dataset:
    """Send one file in an association proposing its SOP class with ``syntaxes`` in one context,
    as a modality does that lists what it can send; return the C-STORE response."""
    return store_one(port, path, syntaxes)


def jpeg_ls_instance(study: str, series: str, number: int) -> Dataset:
    """A CT instance whose pixel data really is JPEG-LS lossless (pyjpegls), as a modality sends it."""
    ds = dicomdata.image(CTImageStorage, study, series, f"{series}.{number}", number, rows=32, columns=32)
    pixels = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 13 + number) % 4096
    ds.compress(JPEGLSLossless, pixels.astype(np.uint16), generate_instance_uid=False)
    return ds
