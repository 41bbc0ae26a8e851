"""Typed records: the only contract between pacsflow's services.

This package imports nothing of pacsflow's but ``pipeline.errors`` (an import-linter contract).
"""

from pipeline.models.columns import Column, DorisTable
from pipeline.models.conversion import ConversionRequest
from pipeline.models.deadletter import StorageDeadLetter
from pipeline.models.doris import TABLES as DORIS_TABLES
from pipeline.models.doris import (
    ConversionRecord,
    DicomImageMeta,
    DicomObjectMeta,
    DicomStateMeta,
    WadoAccessLog,
)
from pipeline.models.identifiers import TenantId, Uid
from pipeline.models.storage import DeletionEvent, StorageEvent, storage_queue_record

__all__ = [
    "DORIS_TABLES",
    "Column",
    "ConversionRecord",
    "ConversionRequest",
    "DeletionEvent",
    "DicomImageMeta",
    "DicomObjectMeta",
    "DicomStateMeta",
    "DorisTable",
    "StorageDeadLetter",
    "StorageEvent",
    "TenantId",
    "Uid",
    "WadoAccessLog",
    "storage_queue_record",
]
