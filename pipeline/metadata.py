"""Series and study metadata (DICOM JSON, PS3.18 F.2): one way to build it, from per-instance fragments.

At indexing, each instance's dataset becomes a *fragment*: its DICOM JSON object, encoded once,
with bulk data URIs relative to the tenant's DICOMweb root (``studies/.../bulkdata/7FE00010``).
A series' or study's metadata is its fragments joined into a JSON array, with those URIs made
absolute. The regenerated files and the web server's on-demand answer both come from
``join_fragments``, so they cannot differ.

Values are converted by pydicom (``DataElement.to_json_dict``), never by hand. We walk the
dataset ourselves only to decide what is bulk data *before* its value is read: the file is
opened with ``defer_size`` so that a 500 MB multi-frame instance costs a seek, not a read.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Any

import orjson
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.valuerep import AMBIGUOUS_VR, BYTES_VR

from pipeline.models import TenantId, Uid

# Pixel data is always bulk data, however small: viewers fetch it as frames or bulk data anyway.
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BULK_URI_KEY = b'"BulkDataURI":"'
# gzip's mtime is fixed so that the same metadata always compresses to the same bytes.
_GZIP_MTIME = 0


def deferred_size(threshold: int) -> int:
    """The ``defer_size`` to read a file with: values pydicom would make bulk data stay unread.

    ``to_json_dict`` makes a binary value bulk data when it is longer than ``threshold // 4 * 3``
    (the size it would have before base64).
    """
    return (threshold // 4) * 3


def instance_uri(study: Uid, series: Uid, sop: Uid) -> str:
    """An instance's WADO-RS path, relative to the tenant's DICOMweb root."""
    return f"studies/{study}/series/{series}/instances/{sop}"


def instance_json(
    ds: Dataset, bulk_prefix: str, threshold: int, skipped: list[str] | None = None
) -> dict[str, Any]:
    """The DICOM JSON object of ``ds`` with bulk values as ``BulkDataURI``s under ``bulk_prefix``.

    A top-level value's URI is ``<bulk_prefix>/7FE00010``; one inside a sequence item names the
    path to it: ``<bulk_prefix>/00880200/0/7FE00010`` (sequence tag, item index from 0, tag).
    An element whose value does not convert is left out and its path added to ``skipped``, as
    pydicom's ``suppress_invalid_tags`` does: one bad optional value must not cost the instance.
    """
    out: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118  # tags; iterating a Dataset yields converted elements
        key = f"{tag:08X}"
        where = f"{bulk_prefix}/{key}"
        try:
            out[key] = _element_json(ds, tag, where, threshold, skipped)
        except Exception:  # anything pydicom raises on a malformed value
            if skipped is not None:
                skipped.append(where.rsplit("/bulkdata/", 1)[-1])
    return out


def _element_json(
    ds: Dataset, tag: int, where: str, threshold: int, skipped: list[str] | None
) -> dict[str, Any]:
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
        vr = _resolved_vr(ds, raw)
        if vr in BYTES_VR:
            return {"vr": vr, "BulkDataURI": where}
    element = ds[tag]
    if element.VR == "SQ":
        items = [
            instance_json(item, f"{where}/{index}", threshold, skipped)
            for index, item in enumerate(element.value)
        ]
        return {"vr": "SQ", "Value": items}
    if tag in PIXEL_DATA_TAGS and not element.is_empty:
        return {"vr": element.VR, "BulkDataURI": where}
    return element.to_json_dict(lambda _element: where, threshold)


def _resolved_vr(ds: Dataset, raw: RawDataElement) -> str:
    """The VR pydicom would give ``raw``, found without reading its value."""
    empty = convert_raw_data_element(raw._replace(value=b"", length=0), ds=ds)
    if empty.VR in AMBIGUOUS_VR:
        return str(correct_ambiguous_vr_element(empty, ds, raw.is_little_endian).VR)
    return str(empty.VR)


def _json_default(value: object) -> object:
    # pydicom's DS values are float subclasses, which orjson leaves to us.
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fragment(
    ds: Dataset, study: Uid, series: Uid, sop: Uid, threshold: int, skipped: list[str] | None = None
) -> bytes:
    """One instance's metadata as stored by the index: JSON bytes, bulk data URIs relative."""
    prefix = f"{instance_uri(study, series, sop)}/bulkdata"
    return orjson.dumps(instance_json(ds, prefix, threshold, skipped), default=_json_default)


def dicomweb_root(public_url: str, tenant: TenantId, default_tenant: TenantId) -> str:
    """The tenant's DICOMweb base URL, as bulk data URIs start."""
    base = public_url.rstrip("/")
    return f"{base}/dicomweb" if tenant == default_tenant else f"{base}/tenants/{tenant}/dicomweb"


def join_fragments(fragments: Iterable[bytes], root: str) -> bytes:
    """A JSON array of the instances, each bulk data URI made absolute under ``root``.

    The byte replacement is exact: inside a JSON string a quote is escaped, so an unescaped
    ``"BulkDataURI":"`` can only be that key followed by the start of its value.
    """
    absolute = BULK_URI_KEY + root.rstrip("/").encode() + b"/"
    return b"[" + b",".join(fragments).replace(BULK_URI_KEY, absolute) + b"]"


def compressed(body: bytes) -> bytes:
    """The ``.json.gz`` beside a metadata file, sent as is to clients that accept gzip."""
    return gzip.compress(body, compresslevel=6, mtime=_GZIP_MTIME)
