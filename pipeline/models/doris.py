"""Records bound for Doris by Routine Load.

Field names and formats are exactly the columns of the jobs in ``doris/routine_load/jobs/``
(dates ``YYYY-MM-DD``, datetimes ``YYYY-MM-DD HH:MM:SS``, UTC); the records serialise to flat JSON
with no Faust metadata, so Doris reads them as they are.
"""

from __future__ import annotations

import faust


class DicomObjectMeta(faust.Record, serializer="json", include_metadata=False):
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
