"""The known-peers rule: which calling AE, from where, to which called AE, may associate."""

from __future__ import annotations

import pytest

from ingress.scp.peers import CALLED_AE_NOT_RECOGNISED, CALLING_AE_NOT_RECOGNISED, KnownPeers, Refusal
from pipeline.settings import load


def known(peers: str, tenants: str = "MRAE=hospital_b") -> KnownPeers:
    return KnownPeers.from_settings(
        load(
            {
                "PACSFLOW_SCP_PEERS": peers,
                "PACSFLOW_SCP_TENANTS": tenants,
                "PACSFLOW_SCP_AE_TITLE": "PACSFLOW",
            }
        )
    )


PEERS = "CT1=default,MR1=hospital_b,US1@10.1.0.0/16=default,US1@fd00::/8=default,ANY@0.0.0.0/0=default"


def test_without_known_peers_anyone_may_associate_to_any_title() -> None:
    assert known("").refusal("STRANGER", "WHATEVER", "203.0.113.9") is None


@pytest.mark.parametrize(
    ("calling", "called", "address"),
    [
        ("CT1", "PACSFLOW", "192.0.2.1"),  # no network: from anywhere
        ("MR1", "MRAE", "192.0.2.1"),  # its tenant's called AE title
        ("US1", "PACSFLOW", "10.1.200.3"),
        ("US1", "PACSFLOW", "::ffff:10.1.0.1"),  # IPv4 as a dual-stack listener reports it
        ("US1", "PACSFLOW", "fd00::17"),
        ("CT1  ", " PACSFLOW ", "192.0.2.1"),  # AE titles come padded with spaces
    ],
)
def test_a_known_peer_is_let_in(calling: str, called: str, address: str) -> None:
    assert known(PEERS).refusal(calling, called, address) is None


@pytest.mark.parametrize(
    ("calling", "called", "address", "refusal"),
    [
        ("STRANGER", "PACSFLOW", "192.0.2.1", CALLING_AE_NOT_RECOGNISED),
        ("ct1", "PACSFLOW", "192.0.2.1", CALLING_AE_NOT_RECOGNISED),  # AE titles are case-sensitive
        ("MR1", "PACSFLOW", "192.0.2.1", CALLING_AE_NOT_RECOGNISED),  # known, for another tenant
        ("CT1", "MRAE", "192.0.2.1", CALLING_AE_NOT_RECOGNISED),
        ("US1", "PACSFLOW", "10.2.0.1", CALLING_AE_NOT_RECOGNISED),  # outside its networks
        ("US1", "PACSFLOW", "fe80::1", CALLING_AE_NOT_RECOGNISED),
        ("ANY", "PACSFLOW", "2001:db8::1", CALLING_AE_NOT_RECOGNISED),  # an IPv4 network holds no IPv6
        ("US1", "PACSFLOW", "not an address", CALLING_AE_NOT_RECOGNISED),
        ("CT1", "NOSUCHAE", "192.0.2.1", CALLED_AE_NOT_RECOGNISED),
        ("STRANGER", "NOSUCHAE", "192.0.2.1", CALLED_AE_NOT_RECOGNISED),  # the called title first
    ],
)
def test_anyone_else_is_refused_with_the_standard_reason(
    calling: str, called: str, address: str, refusal: Refusal
) -> None:
    assert known(PEERS).refusal(calling, called, address) == refusal


def test_the_reasons_are_the_a_associate_rj_codes() -> None:
    # PS3.8 9.3.4, result source service-user: 3 calling AE, 7 called AE not recognised.
    assert (CALLING_AE_NOT_RECOGNISED.diagnostic, CALLED_AE_NOT_RECOGNISED.diagnostic) == (3, 7)


def test_pacsflows_own_title_reaches_the_default_tenant() -> None:
    peers = known("CT1=default", tenants="")
    assert peers.refusal("CT1", "PACSFLOW", "192.0.2.1") is None
    assert peers.refusal("CT1", "MRAE", "192.0.2.1") == CALLED_AE_NOT_RECOGNISED
