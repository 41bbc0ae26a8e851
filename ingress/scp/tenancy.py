"""Which tenant an association stores under: its called AE title, mapped by configuration."""

from __future__ import annotations

from collections.abc import Mapping

from pynetdicom.association import Association

from pipeline.models import TenantId


def called_ae(assoc: Association) -> str:
    """The AE title the peer called: what its tenant is chosen by."""
    request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before any handler runs
    return str(request.called_ae_title).strip() if request is not None else ""


def tenant_for(called_ae: str, mapping: Mapping[str, TenantId], default: TenantId) -> TenantId:
    """``PACSFLOW_SCP_TENANTS`` maps called AE titles to tenants; any other title gets the default."""
    return mapping.get(called_ae.strip(), default)
