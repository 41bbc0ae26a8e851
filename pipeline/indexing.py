"""What the index keeps of one stored instance, from its header: rows and Doris records (pure).

``index_instance`` touches nothing: the agent reads the header, calls it, and does the I/O. Optional
attributes with values that do not parse become NULL rather than failing the instance; what makes
an instance unindexable (its identifiers) raises ``UnindexableInstance``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from pydicom.dataset import Dataset

from pipeline import metadata
from pipeline.errors import PacsflowError
from pipeline.models import DicomImageMeta, DicomStateMeta, StorageEvent, TenantId, Uid
from pipeline.models.formats import doris_date, doris_datetime, doris_datetime_ms, uid_hash

CONVERSION_PENDING, CONVERSION_DONE, CONVERSION_FAILED = 0, 1, 2


def needs_conversion(transfer_syntax: str, has_pixels: bool, viewer_syntaxes: tuple[str, ...]) -> bool:
    """Whether the viewer needs a converted copy: pixel data in a syntax it does not decode."""
    return has_pixels and transfer_syntax not in viewer_syntaxes


class UnindexableInstance(PacsflowError):
    """An event that can never be indexed as it is (bad identifiers, file not what it says)."""


@dataclass(frozen=True)
class InstanceRow:
    """A row of ``dicom_instance_meta``."""

    tenant_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    file_path: str
    file_size: int
    received_time: datetime
    trace_id: str
    json_fragment: bytes
    """The instance's DICOM JSON (``pipeline.metadata.fragment``): what series metadata is built from."""
    frame_index: bytes | None = None
    """Where each frame's bytes are in the file (``pipeline.frames``); None: read by parsing it."""
    conversion_status: int | None = None
    """``CONVERSION_PENDING`` when the viewer cannot decode the stored syntax; None otherwise."""


@dataclass(frozen=True)
class SeriesRow:
    """A row of ``dicom_state_meta`` but for what is computed from rows (count, times)."""

    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    study_uid_hash: str
    series_uid_hash: str
    patient_name: str | None
    patient_sex: str | None
    patient_birth_date: date | None
    patient_birth_time: time | None
    patient_age: str | None
    patient_size: float | None
    patient_weight: float | None
    pregnancy_status: int | None
    study_date: date | None
    study_date_origin: str
    study_time: time | None
    accession_number: str
    study_id: str | None
    study_description: str | None
    modality: str | None
    series_number: int | None
    series_date: date | None
    series_time: time | None
    series_description: str | None
    body_part_examined: str | None
    protocol_name: str | None
    referring_physician_name: str | None

    def columns(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IndexedInstance:
    instance: InstanceRow
    series: SeriesRow
    image: DicomImageMeta
    unconverted: tuple[str, ...] = ()
    """Elements left out of the instance's metadata because their values do not convert."""


def _get(ds: Dataset, keyword: str) -> Any:
    """A value, or None when it is absent or does not convert (pydicom converts on access)."""
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, OverflowError):
        return None


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
    text = text.strip().replace("\x00", "")
    return text[:limit] or None


def _is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _number(ds: Dataset, keyword: str, kind: type[int] | type[float]) -> Any:
    value = _get(ds, keyword)
    if _is_multi(value):
        value = value[0] if value else None
    if value is None or str(value).strip() == "":
        return None
    try:
        return kind(float(str(value))) if kind is int else kind(str(value))
    except (TypeError, ValueError):
        return None


def parse_da(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_tm(value: object) -> time | None:
    """A DICOM TM (``HHMMSS.FFFFFF``, any tail left off; the old ``HH:MM:SS`` too)."""
    text = str(value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    try:
        return time(
            int(whole[:2]),
            int(whole[2:4] or 0),
            min(int(whole[4:6] or 0), 59),  # 60: a leap second, as DICOM allows
            int((fraction + "000000")[:6]) if fraction else 0,
        )
    except ValueError:
        return None


def _iso(value: date | time | None) -> str | None:
    return value.isoformat() if value is not None else None


def _checked_uid(event_value: str, header_value: object, what: str) -> Uid:
    try:
        uid = Uid(event_value, what)
    except PacsflowError as exc:
        raise UnindexableInstance(f"event: {exc}") from exc
    found = str(header_value or "").strip()
    if found != uid:
        raise UnindexableInstance(f"file's {what} {found!r} is not the event's {uid}")
    return uid


def index_instance(
    event: StorageEvent,
    header: Dataset,
    indexed: datetime,
    *,
    bulkdata_threshold: int = 1024,
    frame_index: bytes | None = None,
    viewer_syntaxes: tuple[str, ...] | None = None,
) -> IndexedInstance:
    """Rows and the image record of one stored instance.

    ``viewer_syntaxes``: what the viewer decodes; an instance with pixel data in another syntax is
    marked pending conversion. None: no conversion is asked for.

    ``header`` is its dataset read with ``defer_size=metadata.deferred_size(bulkdata_threshold)``,
    so that bulk values (pixel data) are known by their size without being read.
    """
    try:
        tenant = TenantId(event.TenantID)
    except PacsflowError as exc:
        raise UnindexableInstance(f"event: {exc}") from exc
    study = _checked_uid(event.StudyInstanceUID, header.get("StudyInstanceUID"), "StudyInstanceUID")
    series = _checked_uid(event.SeriesInstanceUID, header.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop = _checked_uid(event.SopInstanceUID, header.get("SOPInstanceUID"), "SOPInstanceUID")
    sop_class = str(_get(header, "SOPClassUID") or event.SopClassUID).strip()
    study_date_origin = (_text(header, "StudyDate", 8) or "").strip()
    patient_id = _text(header, "PatientID", 64) or ""
    rows = _number(header, "Rows", int)
    columns = _number(header, "Columns", int)
    frames = _number(header, "NumberOfFrames", int) or (1 if rows else None)
    instance_number = _number(header, "InstanceNumber", int)
    received = datetime.fromisoformat(event.ReceivedTime)
    unconverted: list[str] = []
    json_fragment = metadata.fragment(header, study, series, sop, bulkdata_threshold, unconverted)
    instance = InstanceRow(
        tenant_id=tenant,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class[:64],
        instance_number=instance_number,
        transfer_syntax_uid=event.TransferSyntax,
        number_of_frames=frames,
        rows=rows,
        columns=columns,
        file_path=event.FilePath,
        file_size=event.FileSize,
        received_time=received,
        trace_id=event.TraceID,
        json_fragment=json_fragment,
        frame_index=frame_index,
        conversion_status=CONVERSION_PENDING
        if viewer_syntaxes is not None
        and needs_conversion(event.TransferSyntax, "PixelData" in header, viewer_syntaxes)
        else None,
    )
    series_row = SeriesRow(
        tenant_id=tenant,
        patient_id=patient_id,
        study_uid=study,
        series_uid=series,
        study_uid_hash=uid_hash(study),
        series_uid_hash=uid_hash(series),
        patient_name=_text(header, "PatientName", 64),
        patient_sex=_text(header, "PatientSex", 1),
        patient_birth_date=parse_da(_get(header, "PatientBirthDate")),
        patient_birth_time=parse_tm(_get(header, "PatientBirthTime")),
        patient_age=_text(header, "PatientAge", 16),
        patient_size=_number(header, "PatientSize", float),
        patient_weight=_number(header, "PatientWeight", float),
        pregnancy_status=_number(header, "PregnancyStatus", int),
        study_date=parse_da(study_date_origin),
        study_date_origin=study_date_origin,
        study_time=parse_tm(_get(header, "StudyTime")),
        accession_number=_text(header, "AccessionNumber", 16) or "",
        study_id=_text(header, "StudyID", 16),
        study_description=_text(header, "StudyDescription", 64),
        modality=_text(header, "Modality", 16),
        series_number=_number(header, "SeriesNumber", int),
        series_date=parse_da(_get(header, "SeriesDate")),
        series_time=parse_tm(_get(header, "SeriesTime")),
        series_description=_text(header, "SeriesDescription", 256),
        body_part_examined=_text(header, "BodyPartExamined", 64),
        protocol_name=_text(header, "ProtocolName", 64),
        referring_physician_name=_text(header, "ReferringPhysicianName", 64),
    )
    image = DicomImageMeta(
        tenant_id=tenant,
        patient_id=patient_id,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_uid_hash=series_row.study_uid_hash,
        series_uid_hash=series_row.series_uid_hash,
        study_date_origin=doris_date(study_date_origin),
        content_date=doris_date(_text(header, "ContentDate", 8)),
        content_time=_text(header, "ContentTime", 32),
        instance_number=instance_number,
        image_type=_text(header, "ImageType", 128),
        image_orientation_patient=_text(header, "ImageOrientationPatient", 128),
        image_position_patient=_text(header, "ImagePositionPatient", 64),
        slice_thickness=_number(header, "SliceThickness", float),
        spacing_between_slices=_number(header, "SpacingBetweenSlices", float),
        slice_location=_number(header, "SliceLocation", float),
        samples_per_pixel=_number(header, "SamplesPerPixel", int),
        photometric_interpretation=_text(header, "PhotometricInterpretation", 32),
        width=rows,
        columns=columns,
        bits_allocated=_number(header, "BitsAllocated", int),
        bits_stored=_number(header, "BitsStored", int),
        high_bit=_number(header, "HighBit", int),
        pixel_representation=_number(header, "PixelRepresentation", int),
        rescale_intercept=_number(header, "RescaleIntercept", float),
        rescale_slope=_number(header, "RescaleSlope", float),
        rescale_type=_text(header, "RescaleType", 64),
        window_center=_text(header, "WindowCenter", 64),
        window_width=_text(header, "WindowWidth", 64),
        transfer_syntax_uid=event.TransferSyntax,
        pixel_data_location=event.FilePath,
        thumbnail_location=None,
        sop_class_uid=sop_class[:64],
        image_status="indexed",
        space_size=event.FileSize,
        created_time=doris_datetime_ms(indexed),
    )
    return IndexedInstance(instance, series_row, image, tuple(unconverted))


def deleted_image_record(
    *,
    tenant: str,
    patient_id: str,
    study: str,
    series: str,
    sop: str,
    study_date_origin: str,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    file_path: str,
    file_size: int,
    when: datetime,
) -> DicomImageMeta:
    """The record that removes a deleted instance's row from Doris (its keys, ``deleted=1``)."""
    return DicomImageMeta(
        tenant_id=tenant,
        patient_id=patient_id,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_uid_hash=uid_hash(study),
        series_uid_hash=uid_hash(series),
        study_date_origin=doris_date(study_date_origin),
        content_date=None,
        content_time=None,
        instance_number=None,
        image_type=None,
        image_orientation_patient=None,
        image_position_patient=None,
        slice_thickness=None,
        spacing_between_slices=None,
        slice_location=None,
        samples_per_pixel=None,
        photometric_interpretation=None,
        width=None,
        columns=None,
        bits_allocated=None,
        bits_stored=None,
        high_bit=None,
        pixel_representation=None,
        rescale_intercept=None,
        rescale_slope=None,
        rescale_type=None,
        window_center=None,
        window_width=None,
        transfer_syntax_uid=transfer_syntax_uid,
        pixel_data_location=file_path,
        thumbnail_location=None,
        sop_class_uid=sop_class_uid,
        image_status="deleted",
        space_size=file_size,
        created_time=doris_datetime_ms(when),
        deleted=1,
    )


def state_record(
    series: SeriesRow, instances: int, created: datetime, *, deleted: bool = False
) -> DicomStateMeta:
    """The Doris record of a series, with its instance count as computed from the rows; with
    ``deleted``, the record that removes the series' row from Doris."""
    return DicomStateMeta(
        tenant_id=series.tenant_id,
        patient_id=series.patient_id,
        study_uid=series.study_uid,
        series_uid=series.series_uid,
        study_uid_hash=series.study_uid_hash,
        series_uid_hash=series.series_uid_hash,
        study_date_origin=series.study_date_origin,
        patient_name=series.patient_name,
        patient_sex=series.patient_sex,
        patient_birth_date=_iso(series.patient_birth_date),
        patient_birth_time=_iso(series.patient_birth_time),
        patient_age=series.patient_age,
        patient_size=series.patient_size,
        patient_weight=series.patient_weight,
        pregnancy_status=series.pregnancy_status,
        study_date=_iso(series.study_date),
        study_time=_iso(series.study_time),
        accession_number=series.accession_number,
        study_id=series.study_id,
        study_description=series.study_description,
        modality=series.modality,
        series_number=series.series_number,
        series_date=_iso(series.series_date),
        series_time=_iso(series.series_time),
        series_description=series.series_description,
        body_part_examined=series.body_part_examined,
        protocol_name=series.protocol_name,
        series_related_instances=instances,
        created_time=doris_datetime(created),
        deleted=int(deleted),
    )
