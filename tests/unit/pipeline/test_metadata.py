"""Per-instance fragments and their joining: pydicom's view of the file, bulk data by reference."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, JPEGBaseline8Bit

from pipeline import metadata
from pipeline.models import TenantId, Uid
from pipeline.regeneration import write_fenced
from pipeline.tables.metadata_window import cleanup_interval, parse_series_key, series_key
from tests.support import dicomdata

STUDY, SERIES = dicomdata.uid(9, 1), dicomdata.uid(9, 1, 1)
ROOT = "https://pacs.example.org/dicomweb"


def stored(ds: Dataset, tmp_path: Path) -> Path:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return path


def built(path: Path, threshold: int = 1024) -> dict[str, Any]:
    """What the index stores for ``path``, joined as a one-instance series."""
    ds = dcmread(path, defer_size=metadata.deferred_size(threshold))
    body = metadata.fragment(
        ds, Uid(ds.StudyInstanceUID), Uid(ds.SeriesInstanceUID), Uid(ds.SOPInstanceUID), threshold
    )
    instances: list[dict[str, Any]] = orjson.loads(metadata.join_fragments([body], ROOT))
    return instances[0]


def bulk(ds: Dataset, path: str) -> str:
    return f"{ROOT}/studies/{STUDY}/series/{SERIES}/instances/{ds.SOPInstanceUID}/bulkdata/{path}"


def reference(path: Path, threshold: int = 1024) -> dict[str, Any]:
    """pydicom's own ``to_json_dict`` of the whole file, every bulk value marked the same way."""
    ds = dcmread(path)
    found: dict[str, Any] = ds.to_json_dict(threshold, lambda element: "BULK")
    if "InlineBinary" in found.get("7FE00010", {}):
        found["7FE00010"] = {"vr": found["7FE00010"]["vr"], "BulkDataURI": "BULK"}
    return found


def marked(value: Any) -> Any:
    """``value`` with every BulkDataURI replaced by the reference's mark."""
    if isinstance(value, dict):
        return {k: "BULK" if k == "BulkDataURI" else marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [marked(v) for v in value]
    return value


def ct(number: int = 1, **kwargs: Any) -> Dataset:
    return dicomdata.image(CTImageStorage, STUDY, SERIES, f"{SERIES}.{number}", number, **kwargs)


def test_an_explicit_vr_instance_is_pydicoms_json_with_pixel_data_by_reference(tmp_path: Path) -> None:
    ds = ct(rows=128, columns=128)
    got = built(stored(ds, tmp_path))
    assert marked(got) == reference(stored(ds, tmp_path))
    assert got["7FE00010"] == {"vr": "OW", "BulkDataURI": bulk(ds, "7FE00010")}
    assert got["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert got["00281052"] == {"vr": "DS", "Value": [-1024]}  # a number, not a string
    assert got["00200013"] == {"vr": "IS", "Value": [1]}


def test_implicit_vr_nested_private_and_trailing_bulk_values_are_found_without_reading_them(
    tmp_path: Path,
) -> None:
    ds = ct(transfer_syntax=ImplicitVRLittleEndian)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 64, 64, 8, 8, 7
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.PixelRepresentation = 1, "MONOCHROME2", 0
    icon.PixelData = bytes(4096)
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091011, "OB", bytes(5000))  # private and large: UN in implicit VR
    ds.add_new(0x60003000, "OW", bytes(900))  # overlay data, just over the threshold
    ds.DataSetTrailingPadding = bytes(2000)  # after the pixel data
    path = stored(ds, tmp_path)

    got = built(path)
    assert marked(got) == reference(path)
    deferred = dcmread(path, defer_size=metadata.deferred_size(1024))
    metadata.fragment(deferred, Uid(STUDY), Uid(SERIES), Uid(ds.SOPInstanceUID), 1024)
    for tag in (0x7FE00010, 0xFFFCFFFC, 0x00091011):
        assert deferred.get_item(tag, keep_deferred=True).value is None  # never read
    assert got["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"] == bulk(ds, "00880200/0/7FE00010")
    assert got["00091011"] == {"vr": "UN", "BulkDataURI": bulk(ds, "00091011")}
    assert got["FFFCFFFC"]["BulkDataURI"] == bulk(ds, "FFFCFFFC")
    assert got["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


def test_values_under_the_threshold_stay_inline_and_the_threshold_is_respected(tmp_path: Path) -> None:
    ds = ct()
    ds.add_new(0x60003000, "OW", bytes(600))  # 800 bytes as base64: under 1024
    path = stored(ds, tmp_path)
    assert "InlineBinary" in built(path)["60003000"]
    assert "BulkDataURI" in built(path, threshold=512)["60003000"]
    assert marked(built(path, threshold=512)) == reference(path, threshold=512)


def test_encapsulated_pixel_data_is_bulk_data_too(tmp_path: Path) -> None:
    ds = ct(transfer_syntax=JPEGBaseline8Bit, frames=3)
    path = stored(ds, tmp_path)
    got = built(path)
    assert got["7FE00010"] == {"vr": "OB", "BulkDataURI": bulk(ds, "7FE00010")}
    assert marked(got) == reference(path)


def test_an_element_that_does_not_convert_is_left_out_and_named(tmp_path: Path) -> None:
    ds = ct()
    path = stored(ds, tmp_path)
    ds = dcmread(path, defer_size=metadata.deferred_size(1024))
    tag = Tag(0x00180050)  # SliceThickness, DS
    original = ds.get_item(tag)
    assert isinstance(original, RawDataElement)
    ds[tag] = original._replace(value=b"not a number", length=12)
    skipped: list[str] = []
    body = metadata.fragment(ds, Uid(STUDY), Uid(SERIES), Uid(ds.SOPInstanceUID), 1024, skipped)
    assert skipped == ["00180050"]
    got = orjson.loads(body)
    assert "00180050" not in got and got["00200013"] == {"vr": "IS", "Value": [1]}


def test_joining_makes_every_uri_absolute_and_only_uris() -> None:
    tricky = orjson.dumps({"00081030": {"vr": "LO", "Value": ['say "BulkDataURI":"x']}})
    one = b'{"7FE00010":{"vr":"OW","BulkDataURI":"studies/1/series/2/instances/3/bulkdata/7FE00010"}}'
    joined = orjson.loads(metadata.join_fragments([one, tricky], ROOT + "/"))
    assert joined[0]["7FE00010"]["BulkDataURI"] == f"{ROOT}/studies/1/series/2/instances/3/bulkdata/7FE00010"
    assert joined[1] == orjson.loads(tricky)
    assert metadata.join_fragments([], ROOT) == b"[]"


def test_the_tenants_dicomweb_root() -> None:
    default = TenantId("default")
    assert metadata.dicomweb_root("http://h:8080/", default, default) == "http://h:8080/dicomweb"
    assert metadata.dicomweb_root("http://h", TenantId("b"), default) == "http://h/tenants/b/dicomweb"


def test_the_gzip_beside_a_file_is_the_same_bytes_every_time() -> None:
    body = b"[" + b",".join([b'{"a":1}'] * 100) + b"]"
    packed = metadata.compressed(body)
    assert packed[4:8] == bytes(4)  # no timestamp in the header: same body, same bytes, any day
    assert gzip.decompress(packed) == body


def test_window_keys_and_cleanup_interval() -> None:
    key = series_key("default", STUDY, SERIES)
    assert parse_series_key(key) == ("default", STUDY, SERIES)
    assert cleanup_interval(2) == pytest.approx(0.2)
    assert cleanup_interval(1) == 0.1 and cleanup_interval(60) == 1.0


def test_a_file_is_never_replaced_by_one_built_from_older_versions(tmp_path: Path) -> None:
    folder = tmp_path / "metadata" / STUDY
    series_file, study_file = folder / f"{SERIES}.json", tmp_path / "metadata" / f"{STUDY}.json"

    def write(version: int, other: int, body: bytes) -> list[tuple[int, int]]:
        return write_fenced(
            folder,
            [(series_file, body, {SERIES: version}), (study_file, body, {SERIES: version, "9.9": other})],
        )

    assert write(2, 1, b"[2]") == [(3, 23), (3, 23)]
    # A late thread of a regeneration that lost its lock: built from version 1, it changes nothing.
    assert write(1, 1, b"[1]") == [(0, 0), (0, 0)]
    assert series_file.read_bytes() == study_file.read_bytes() == b"[2]"
    assert gzip.decompress(series_file.with_name(series_file.name + ".gz").read_bytes()) == b"[2]"
    # Another series of the study moved on: the study file is newer, the series file is not older.
    assert write(2, 5, b"[5]") == [(3, 23), (3, 23)]
    assert study_file.read_bytes() == b"[5]"
