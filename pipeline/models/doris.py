"""Records bound for Doris by Routine Load.

Field names and formats are exactly the columns of the jobs in ``doris/routine_load/jobs/``
(dates ``YYYY-MM-DD``, datetimes ``YYYY-MM-DD HH:MM:SS``, UTC); the records serialise to flat JSON
with no Faust metadata, so Doris reads them as they are.
"""

from __future__ import annotations

from pipeline.models.record import Record


class DicomObjectMeta(Record):
    """One received object (Doris ``dicom_object_meta``), on ``log_queue``."""

    trace_id: str
    worker_node_id: str
    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    file_size: int
    file_path: str
    transfer_syntax_uid: str
    number_of_frames: int | None
    created_time: str
    series_uid_hash: str
    study_uid_hash: str
    accession_number: str | None
    target_ts: str | None
    study_date: str | None
    transfer_status: str
    source_ip: str
    source_ae: str


class DicomStateMeta(Record, kw_only=True):
    """One series with its patient and study (Doris ``dicom_state_meta``), on ``dicom_state_queue``.

    ``updated_time`` is not here: the Routine Load job sets it (``updated_time = NOW()``).
    """

    tenant_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    study_uid_hash: str
    series_uid_hash: str
    study_date_origin: str
    patient_name: str | None
    patient_sex: str | None
    patient_birth_date: str | None
    patient_birth_time: str | None
    patient_age: str | None
    patient_size: float | None
    patient_weight: float | None
    pregnancy_status: int | None
    study_date: str | None
    study_time: str | None
    accession_number: str
    study_id: str | None
    study_description: str | None
    modality: str | None
    series_number: int | None
    series_date: str | None
    series_time: str | None
    series_description: str | None
    body_part_examined: str | None
    protocol_name: str | None
    series_related_instances: int
    created_time: str
    deleted: int = 0
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
    study_uid_hash: str
    series_uid_hash: str
    study_date_origin: str | None
    content_date: str | None
    content_time: str | None
    instance_number: int | None
    image_type: str | None
    image_orientation_patient: str | None
    image_position_patient: str | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    slice_location: float | None
    samples_per_pixel: int | None
    photometric_interpretation: str | None
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
    pixel_data_location: str | None
    thumbnail_location: str | None
    sop_class_uid: str
    image_status: str
    space_size: int
    created_time: str
    deleted: int = 0
    """1: the instance was deleted; removed from Doris by the job's ``DELETE ON deleted = 1``."""


class WadoAccessLog(Record):
    """One DICOMweb request answered by ``pacsflow web`` (Doris ``wado_access_log``), on
    ``wado_access_log``."""

    tenant_id: str
    route: str
    """The route's pattern (``/dicomweb/studies/{study}/series``), not the URL with its UIDs."""
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    status: int
    bytes: int
    """Bytes sent for the answer: status line, headers and body (nginx's ``$bytes_sent``)."""
    duration_ms: float
    client_address: str | None
    trace_id: str
    created_time: str
    worker_node_id: str


class ConversionRecord(Record):
    """One attempt of the conversion agent, success or failure (Doris ``conversion_record``), on
    ``conversion_log``."""

    tenant_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    source_ts: str
    target_ts: str
    status: str
    """``converted``, ``failed``, or ``skipped`` (the instance changed or went before its turn)."""
    reason: str | None
    trace_id: str
    worker_node_id: str
    created_time: str
