"""C-STORE response statuses (PS3.4 Annex B.2.3): the receiver's, and the ErrorComment beside them."""

from __future__ import annotations

# One mapping of refusals to statuses for C-STORE and STOW-RS (its FailureReason): the receiver's.
from pipeline.ingest import StoreStatus, status_for

__all__ = ["StoreStatus", "error_comment", "status_for"]


def error_comment(error: BaseException) -> str:
    """ErrorComment is an LO: at most 64 characters, no backslash."""
    text = str(error).replace("\\", "/").replace("\n", " ")
    return text if len(text) <= 64 else text[:61] + "..."
