"""The UIDs of a received dataset as its bytes have them: read (``pipeline.dicomfile.read_header``) and
checked (``pipeline.ingest.locate``) before anything is written.

pydicom's ``UID`` strips whitespace, so a StudyInstanceUID of ``1.2.3\\n`` would read as ``1.2.3``
and be stored under a path and an index row that differ from the file's own value. Only DICOM's
padding (a trailing NUL, or a space) is not part of a UID. The same through a real SCP:
tests/integration/test_scp_bad_input.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pipeline.dicomfile import read_header
from pipeline.errors import InvalidIdentifier
from pipeline.ingest import locate
from pipeline.models import TenantId
from tests.integration.test_scp_bad_input import fresh, with_raw_uid
from tests.support import dicomdata

TENANT = TenantId("default")


def _dataset(tmp_path: Path, attribute: str, raw: bytes) -> bytes:
    data = with_raw_uid(fresh(), attribute, raw, tmp_path / "raw.dcm").read_bytes()
    return data[dicomdata.dataset_offset(data) :]


@pytest.mark.parametrize(
    ("attribute", "raw"),
    [
        ("StudyInstanceUID", b"1.2.3\n"),
        ("StudyInstanceUID", b"1.2.3\r\n"),
        ("StudyInstanceUID", b"\t1.2.3"),
        ("SeriesInstanceUID", b"1.2.3\x0c"),
        ("SOPInstanceUID", b"1.2.3\n\x00"),
    ],
)
def test_whitespace_in_a_uid_is_refused_before_anything_is_written(
    tmp_path: Path, attribute: str, raw: bytes
) -> None:
    header = read_header(_dataset(tmp_path, attribute, raw), ExplicitVRLittleEndian)
    with pytest.raises(InvalidIdentifier, match=f"{attribute} is not a valid UID"):
        locate(header, TENANT)


@pytest.mark.parametrize("raw", [b"1.2.3", b"1.2.3\x00", b"1.2.3 ", b"1.2.34"])
def test_padding_is_not_part_of_the_uid(tmp_path: Path, raw: bytes) -> None:
    header = read_header(_dataset(tmp_path, "StudyInstanceUID", raw), ExplicitVRLittleEndian)
    assert locate(header, TENANT).study == raw.rstrip(b"\x00 ").decode()
