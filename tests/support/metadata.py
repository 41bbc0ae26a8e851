"""What series and study metadata must hold, computed the reference way: pydicom's ``to_json_dict``
of the stored file, with PixelData as a BulkDataURI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from pydicom import dcmread

THRESHOLD = 1024  # PACSFLOW_BULKDATA_THRESHOLD's default


def expected_instance(path: Path, root: str) -> dict[str, Any]:
    ds = dcmread(path)
    base = (
        f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata"
    )
    expected: dict[str, Any] = ds.to_json_dict(THRESHOLD, lambda element: f"{base}/{element.tag:08X}")
    if "7FE00010" in expected:
        expected["7FE00010"] = {"vr": expected["7FE00010"]["vr"], "BulkDataURI": f"{base}/7FE00010"}
    return expected


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """A metadata file's instances, after checking its ``.json.gz`` holds the same bytes."""
    body = path.read_bytes()
    assert gzip.decompress(path.with_name(path.name + ".gz").read_bytes()) == body
    instances: list[dict[str, Any]] = json.loads(body)
    return instances


def sop_of(instance: dict[str, Any]) -> str:
    return str(instance["00080018"]["Value"][0])


def number_of(instance: dict[str, Any]) -> int:
    return int(instance["00200013"]["Value"][0])
