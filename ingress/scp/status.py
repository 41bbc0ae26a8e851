"""Response statuses: C-STORE's (PS3.4 Annex B.2.3), the receiver's; those C-FIND, C-GET and C-MOVE
share (PS3.4 C.4); and the ErrorComment beside them."""

from __future__ import annotations

# One mapping of refusals to statuses for C-STORE and STOW-RS (its FailureReason): the receiver's.
from pipeline.ingest import StoreStatus, status_for

__all__ = [
    "CANCELLED",
    "IDENTIFIER_DOES_NOT_MATCH",
    "PENDING",
    "UNABLE_TO_PROCESS",
    "StoreStatus",
    "error_comment",
    "status_for",
]

PENDING = 0xFF00
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000


def error_comment(error: BaseException) -> str:
    """ErrorComment is an LO: at most 64 characters, no backslash."""
    text = str(error).replace("\\", "/").replace("\n", " ")
    return text if len(text) <= 64 else text[:61] + "..."
