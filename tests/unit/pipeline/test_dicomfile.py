from __future__ import annotations

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from pipeline.dicomfile import read_header
from pipeline.errors import UnreadableDataset
from tests.support import dicomdata


def dataset(syntax: str, **kwargs: object) -> bytes:
    ds = dicomdata.ct_series(
        dicomdata.uid(9, 1), dicomdata.uid(9, 1, 1), 1, transfer_syntax=syntax, **kwargs
    )[0]
    data = dicomdata.encode(ds)
    return data[dicomdata.dataset_offset(data) :]


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit],
)
def test_header_of_a_whole_dataset(syntax: str) -> None:
    header = read_header(dataset(syntax, frames=2), syntax)
    assert header.study_uid == dicomdata.uid(9, 1)
    assert header.series_uid == dicomdata.uid(9, 1, 1)
    assert header.sop_instance_uid == dicomdata.uid(9, 1, 1) + ".1"
    assert header.patient_id == "PAT-CT"
    assert header.accession_number == "ACC1"
    assert header.study_date == "20260115"
    assert header.number_of_frames == 2


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit],
)
@pytest.mark.parametrize("cut", [1, 7, 8, 100, 4000])
def test_truncation_anywhere_is_detected(syntax: str, cut: int) -> None:
    whole = dataset(syntax)
    with pytest.raises(UnreadableDataset):
        read_header(whole[:-cut], syntax)


def test_trailing_bytes_that_are_no_element_are_refused() -> None:
    with pytest.raises(UnreadableDataset, match="trailing"):
        read_header(dataset(ExplicitVRLittleEndian) + b"\x08\x00", ExplicitVRLittleEndian)


def test_a_non_transfer_syntax_is_refused() -> None:
    with pytest.raises(UnreadableDataset, match="not a transfer syntax"):
        read_header(dataset(ExplicitVRLittleEndian), "1.2.840.10008.5.1.4.1.1.2")
