"""C-MOVE destinations (``PACSFLOW_SCP_MOVE_DESTINATIONS``): the AE titles a requestor may name as
Move Destination, per tenant, and where pacsflow reaches them. Any other is refused (0xA801): the
address of a destination is never taken from the requestor."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models import TenantId
from pipeline.settings import MoveDestination


@dataclass(frozen=True)
class MoveDestinations:
    entries: tuple[MoveDestination, ...]

    def find(self, ae_title: str, tenant: TenantId) -> MoveDestination | None:
        """Where ``ae_title`` is for an association of ``tenant``: its entry for that tenant, else
        its entry open to every tenant; None when there is neither."""
        title = ae_title.strip()
        shared = None
        for entry in self.entries:
            if entry.ae_title != title:
                continue
            if entry.tenant == tenant:
                return entry
            if entry.tenant is None:
                shared = entry
        return shared
