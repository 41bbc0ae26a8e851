"""The event of one stored instance, on ``storage_queue``.

Field names follow the wire contract, not PEP 8: the seed design's MessageBody (``TransferSyntax``,
``SopInstanceUID``, ...) and, for what pacsflow adds, the same style.
"""

from __future__ import annotations

from typing import Literal

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


class DeletionEvent(Record, kw_only=True):
    """A DELETE the web server accepted, on ``storage_queue`` with the study's key: ordered with that
    study's stores, so an instance stored after the request outlives it."""

    Action: Literal["delete"] = "delete"
    TenantID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    """None: the whole study."""
    SopInstanceUID: str | None
    """None: the whole series (or study)."""
    Cutoff: str
    """ISO 8601, the index's clock when the request was accepted: instances indexed after it (a
    store that raced the request) are kept."""
    RequestedTime: str
    TraceID: str
    NodeID: str
    SourceIP: str


def storage_queue_record(raw: bytes) -> StorageEvent | DeletionEvent:
    """What a ``storage_queue`` record holds; ValueError (naming the problem) when it is neither."""
    try:
        return StorageEvent.loads(raw)
    except ValueError as not_stored:
        try:
            return DeletionEvent.loads(raw)
        except ValueError:
            raise not_stored from None
