"""Typed records: the only contract between pacsflow's services.

This package imports nothing of pacsflow's but ``pipeline.errors`` (an import-linter contract).
"""

from pipeline.models.doris import DicomObjectMeta
from pipeline.models.identifiers import TenantId, Uid
from pipeline.models.storage import StorageEvent

__all__ = ["DicomObjectMeta", "StorageEvent", "TenantId", "Uid"]
