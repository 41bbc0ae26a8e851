"""Typed records: the only contract between pacsflow's services.

This package imports nothing of pacsflow's but ``pipeline.errors`` (an import-linter contract).
"""

from pipeline.models.deadletter import StorageDeadLetter
from pipeline.models.doris import DicomImageMeta, DicomObjectMeta, DicomStateMeta, WadoAccessLog
from pipeline.models.identifiers import TenantId, Uid
from pipeline.models.storage import StorageEvent

__all__ = [
    "DicomImageMeta",
    "DicomObjectMeta",
    "DicomStateMeta",
    "StorageDeadLetter",
    "StorageEvent",
    "TenantId",
    "Uid",
    "WadoAccessLog",
]
