"""The conversion agent's work item, on ``conversion_queue``."""

from __future__ import annotations

from pipeline.models.record import Record


class ConversionRequest(Record):
    """An indexed instance whose transfer syntax the viewer cannot decode: convert it.

    ``trace_id`` is the store's: the converted copy is recorded only while the index still holds
    that store of the instance (a replaced or deleted instance is skipped, not converted stale).
    """

    tenant_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    file_path: str
    source_ts: str
    target_ts: str
    trace_id: str
