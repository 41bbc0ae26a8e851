"""Known peers (``PACSFLOW_SCP_PEERS``): when some are listed, only they may associate, each for its
tenant and, when a network is given, from inside it.

The tenant is decided as always by the called AE title (``tenancy``); a called title pacsflow does
not answer to is refused first, so that a listed peer cannot reach the default tenant by a typo.
The rule is pure; ``admission`` applies it to pynetdicom's associations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ingress.scp.tenancy import tenant_for
from pipeline.models import TenantId
from pipeline.settings import ScpPeer, Settings


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused, as the A-ASSOCIATE-RJ says it (PS3.8 9.3.4)."""

    reason: str
    diagnostic: int
    """The reason code for result source "service-user" (1): what the peer's tools print."""


CALLING_AE_NOT_RECOGNISED = Refusal("calling AE title not recognised", 3)
CALLED_AE_NOT_RECOGNISED = Refusal("called AE title not recognised", 7)


@dataclass(frozen=True)
class KnownPeers:
    peers: tuple[ScpPeer, ...]
    """Empty: any peer may associate, to any called AE title."""
    own_titles: frozenset[str]
    """The called AE titles pacsflow answers to."""
    tenants: Mapping[str, TenantId]
    default_tenant: TenantId

    @classmethod
    def from_settings(cls, settings: Settings) -> KnownPeers:
        return cls(
            peers=settings.scp_peers,
            own_titles=frozenset({settings.scp_ae_title, *settings.scp_tenants}),
            tenants=settings.scp_tenants,
            default_tenant=settings.default_tenant,
        )

    def refusal(self, calling_ae: str, called_ae: str, address: str) -> Refusal | None:
        """None when the peer at ``address`` may associate as ``calling_ae`` to ``called_ae``."""
        if not self.peers:
            return None
        called = called_ae.strip()
        if called not in self.own_titles:
            return CALLED_AE_NOT_RECOGNISED
        tenant = tenant_for(called, self.tenants, self.default_tenant)
        calling = calling_ae.strip()
        ip = _ip(address)
        for peer in self.peers:
            if peer.ae_title != calling or peer.tenant != tenant:
                continue
            if peer.network is None or (ip is not None and ip in peer.network):
                return None
        return CALLING_AE_NOT_RECOGNISED


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # no address to place in a network: only peers listed without one match
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; networks are written as IPv4.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
