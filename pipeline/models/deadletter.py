"""An event that could not be processed, with the reason: on ``storage_dlq``, for operators."""

from __future__ import annotations

from pipeline.models.record import Record
from pipeline.models.storage import StorageEvent


class StorageDeadLetter(Record):
    event: StorageEvent | None
    """None when the message was not a StorageEvent at all; ``raw`` then holds it."""
    raw: str | None
    reason: str
    failed_time: str
    """ISO 8601, UTC."""
    node_id: str
