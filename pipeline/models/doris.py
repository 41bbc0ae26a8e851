"""Records bound for Doris by Routine Load.

Field names and formats are exactly the columns of the jobs in ``doris/routine_load/jobs/``
(dates ``YYYY-MM-DD``, datetimes ``YYYY-MM-DD HH:MM:SS``, UTC); the records serialise to flat JSON
with no Faust metadata, so Doris reads them as they are.
"""

from __future__ import annotations

from pipeline.models.columns import (
    BigInt,
    Char1,
    Column,
    Date,
    DateTime,
    DateTimeMs,
    DorisTable,
    Hash,
    Path,
    Text8,
    Text16,
    Text32,
    Text128,
    Text256,
    TinyInt,
    TraceId,
)
from pipeline.models.record import Record


class DicomObjectMeta(Record):
    """One received object (Doris ``dicom_object_meta``), on ``log_queue``."""

    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    file_size: BigInt
    file_path: Path
    transfer_syntax_uid: str
    number_of_frames: int | None
    created_time: DateTimeMs
    """When the object was received (its file and event durable)."""
    series_uid_hash: Hash
    study_uid_hash: Hash
    accession_number: str | None
    target_ts: str | None
    study_date: Date | None
    transfer_status: str
    source_ip: str
    """The peer's address: IPv6 included, hence VARCHAR(64) where the seed had 24."""
    source_ae: str
    trace_id: TraceId
    worker_node_id: str


class DicomStateMeta(Record, kw_only=True):
    """One series with its patient and study (Doris ``dicom_state_meta``), on ``dicom_state_queue``.

    ``updated_time`` is not here: the Routine Load job sets it (``updated_time = NOW()``).
    """

    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    study_uid_hash: Hash
    series_uid_hash: Hash
    study_date_origin: Text8
    patient_name: Text256 | None
    patient_sex: Char1 | None
    patient_birth_date: Date | None
    patient_birth_time: Text16 | None
    patient_age: Text16 | None
    patient_size: float | None
    patient_weight: float | None
    pregnancy_status: int | None
    study_date: Date | None
    study_time: Text16 | None
    accession_number: Text16
    study_id: Text16 | None
    study_description: Text256 | None
    modality: Text16 | None
    series_number: int | None
    series_date: Date | None
    series_time: Text16 | None
    series_description: Text256 | None
    body_part_examined: str | None
    protocol_name: Text256 | None
    series_related_instances: int
    created_time: DateTime
    deleted: TinyInt = 0
    """1: the series was deleted. The Routine Load job merges with ``DELETE ON deleted = 1``, so
    Doris removes the row (its hidden delete sign) rather than keeping a flagged one."""


class DicomImageMeta(Record, kw_only=True):
    """One instance's image attributes (Doris ``dicom_image_meta``), on ``dicom_image_queue``.

    As in the seed, ``width`` holds Rows and ``columns`` Columns; ``study_date_origin`` is a DATE
    column there, so it is ``YYYY-MM-DD`` here.
    """

    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_uid_hash: Hash
    series_uid_hash: Hash
    study_date_origin: Date | None
    content_date: Date | None
    content_time: Text32 | None
    instance_number: int | None
    image_type: Text128 | None
    image_orientation_patient: Text128 | None
    image_position_patient: str | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    slice_location: float | None
    samples_per_pixel: int | None
    photometric_interpretation: Text32 | None
    width: int | None
    columns: int | None
    bits_allocated: int | None
    bits_stored: int | None
    high_bit: int | None
    pixel_representation: int | None
    rescale_intercept: float | None
    rescale_slope: float | None
    rescale_type: str | None
    window_center: str | None
    window_width: str | None
    transfer_syntax_uid: str
    pixel_data_location: Path | None
    thumbnail_location: Path | None
    sop_class_uid: str
    image_status: Text32
    space_size: BigInt
    created_time: DateTimeMs
    """When the index agent indexed the instance: minus its object's, the ingest latency."""
    deleted: TinyInt = 0
    """1: the instance was deleted; removed from Doris by the job's ``DELETE ON deleted = 1``."""


class WadoAccessLog(Record):
    """One DICOMweb request answered by ``pacsflow web`` (Doris ``wado_access_log``), on
    ``wado_access_log``."""

    tenant_id: str
    route: Text128
    """The route's pattern (``/dicomweb/studies/{study}/series``), not the URL with its UIDs."""
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    status: int
    bytes: BigInt
    """Bytes sent for the answer: status line, headers and body (nginx's ``$bytes_sent``)."""
    duration_ms: float
    client_address: str | None
    trace_id: TraceId
    created_time: DateTime
    worker_node_id: str
    subject: Text256 | None = None
    """The bearer token's ``sub`` (``PACSFLOW_AUTH=jwt``): who read, stored or deleted; else NULL."""
    client_id: Text128 | None = None
    """The token's ``azp`` (or ``client_id``): the application it was issued to."""


class ConversionRecord(Record):
    """One attempt of the conversion agent, success or failure (Doris ``conversion_record``), on
    ``conversion_log``."""

    tenant_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    source_ts: str
    target_ts: str
    status: Text32
    """``converted``, ``failed``, or ``skipped`` (the instance changed or went before its turn)."""
    reason: Text256 | None
    trace_id: TraceId
    worker_node_id: str
    created_time: DateTime


_UPDATED = Column("updated_time", "DATETIME", nullable=True, expression="NOW()")

TABLES: tuple[DorisTable, ...] = (
    DorisTable(
        name="dicom_object_meta",
        record=DicomObjectMeta,
        topic="log_queue",
        job="medical_object_load",
        model="DUPLICATE",
        key=("tenant_id", "patient_id", "study_uid", "series_uid", "sop_uid"),
        description="One row per received object (C-STORE or STOW-RS), every store kept.",
    ),
    DorisTable(
        name="dicom_state_meta",
        record=DicomStateMeta,
        topic="dicom_state_queue",
        job="medical_state_load",
        model="UNIQUE",
        key=("tenant_id", "patient_id", "study_uid", "series_uid"),
        description="One row per series, with its patient and study; the last record wins.",
        computed=(_UPDATED,),
        merge_deletes=True,
    ),
    DorisTable(
        name="dicom_image_meta",
        record=DicomImageMeta,
        topic="dicom_image_queue",
        job="medical_image_load",
        model="UNIQUE",
        key=("tenant_id", "patient_id", "study_uid", "series_uid", "sop_uid"),
        description="One row per instance, with its image attributes; the last record wins.",
        computed=(_UPDATED,),
        merge_deletes=True,
    ),
    DorisTable(
        name="wado_access_log",
        record=WadoAccessLog,
        topic="wado_access_log",
        job="medical_access_load",
        model="DUPLICATE",
        key=("tenant_id", "route", "study_uid", "series_uid", "sop_uid"),
        description="One row per DICOMweb request answered by pacsflow web.",
    ),
    DorisTable(
        name="conversion_record",
        record=ConversionRecord,
        topic="conversion_log",
        job="medical_conversion_load",
        model="DUPLICATE",
        key=("tenant_id", "study_uid", "series_uid", "sop_uid"),
        description="One row per transfer syntax conversion attempt: converted, failed or skipped.",
    ),
)
"""Every Doris-bound topic and its table, in the order ``pacsflow doris apply`` creates them."""
