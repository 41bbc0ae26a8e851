"""Which tenant an association stores under: its called AE title, mapped by configuration."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.models import TenantId


def tenant_for(called_ae: str, mapping: Mapping[str, TenantId], default: TenantId) -> TenantId:
    """``PACSFLOW_SCP_TENANTS`` maps called AE titles to tenants; any other title gets the default."""
    return mapping.get(called_ae.strip(), default)
