"""C-STORE response statuses (PS3.4 Annex B.2.3) and the failure each error maps to."""

from __future__ import annotations

from enum import IntEnum

from pipeline.errors import (
    InstanceUidMismatch,
    InvalidIdentifier,
    MissingAttribute,
    PacsflowError,
    SopClassMismatch,
    StorageFull,
    UnreadableDataset,
)


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # 0xC000-0xCFFF is "Cannot understand"; the low bits are ours, the ErrorComment says which.
    CANNOT_UNDERSTAND = 0xC000
    MISSING_ATTRIBUTE = 0xC001
    INVALID_IDENTIFIER = 0xC002
    INSTANCE_UID_MISMATCH = 0xC003


_FAILURES: tuple[tuple[type[PacsflowError], StoreStatus], ...] = (
    (StorageFull, StoreStatus.OUT_OF_RESOURCES),
    (SopClassMismatch, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (UnreadableDataset, StoreStatus.CANNOT_UNDERSTAND),
    (MissingAttribute, StoreStatus.MISSING_ATTRIBUTE),
    (InvalidIdentifier, StoreStatus.INVALID_IDENTIFIER),
    (InstanceUidMismatch, StoreStatus.INSTANCE_UID_MISMATCH),
)


def status_for(error: PacsflowError) -> StoreStatus:
    for kind, status in _FAILURES:
        if isinstance(error, kind):
            return status
    return StoreStatus.PROCESSING_FAILURE


def error_comment(error: BaseException) -> str:
    """ErrorComment is an LO: at most 64 characters, no backslash."""
    text = str(error).replace("\\", "/").replace("\n", " ")
    return text if len(text) <= 64 else text[:61] + "..."
