"""The event of one stored instance, on ``storage_queue``.

Field names follow the wire contract, not PEP 8: the seed design's MessageBody (``TransferSyntax``,
``SopInstanceUID``, ...) and, for what pacsflow adds, the same style.
"""

from __future__ import annotations

from pipeline.models.record import Record


class StorageEvent(Record):
    """One instance safely on disk: what the index agent needs to find and trust the file."""

    TransferSyntax: str
    SopInstanceUID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    PatientID: str
    FileName: str
    FileSize: int
    FilePath: str
    """Path of the file under the storage root: ``<Tenant>/<Study>/<Series>/<SOP>.dcm``."""
    TenantID: str
    SopClassUID: str
    SourceAE: str
    SourceIP: str
    ReceivedTime: str
    """ISO 8601, UTC, microseconds: when the file became durable."""
    TraceID: str
    NodeID: str
