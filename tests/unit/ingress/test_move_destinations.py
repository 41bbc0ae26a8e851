"""PACSFLOW_SCP_MOVE_DESTINATIONS: parsed with clear errors, looked up per tenant."""

from __future__ import annotations

import pytest

from ingress.scp.destinations import MoveDestinations
from pipeline import settings
from pipeline.errors import SettingsError
from pipeline.models import TenantId
from pipeline.settings import MoveDestination


def _load(raw: str) -> tuple[MoveDestination, ...]:
    return settings.load({"PACSFLOW_SCP_MOVE_DESTINATIONS": raw}).scp_move_destinations


def test_entries_with_and_without_a_tenant() -> None:
    assert _load(" WS1=10.0.0.5:104 , VIEWER@hospital_a=viewer.local:11112,V6=[fd00::1]:4242") == (
        MoveDestination("WS1", None, "10.0.0.5", 104),
        MoveDestination("VIEWER", TenantId("hospital_a"), "viewer.local", 11112),
        MoveDestination("V6", None, "fd00::1", 4242),
    )
    assert _load("") == ()


def test_the_same_title_for_two_tenants_and_for_all() -> None:
    loaded = _load("WS=a:1,WS@t1=b:2,WS@t2=c:3")
    assert [(d.tenant, d.host) for d in loaded] == [(None, "a"), ("t1", "b"), ("t2", "c")]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("WS1", "'WS1' is not DEST_AE[@tenant]=host:port (e.g. WS1=10.0.0.5:104"),
        ("=host:104", "is not DEST_AE[@tenant]=host:port"),
        ("WS1=host", "'host' in 'WS1=host' is not host:port"),
        ("WS1=host:0", "port 0 in 'WS1=host:0' is not between 1 and 65535"),
        ("WS1=host:70000", "port 70000"),
        ("WS1@not a tenant=host:1", "tenant is not valid"),
        ("A_TITLE_LONGER_THAN_16=host:1", "is not an AE title"),
        ("WS1=a:1,WS1=b:2", "WS1 is listed twice"),
    ],
)
def test_bad_entries_say_what_is_wrong_with_an_example(raw: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:
        _load(raw)
    assert "PACSFLOW_SCP_MOVE_DESTINATIONS" in str(raised.value)
    assert says in str(raised.value)


def test_a_tenant_entry_wins_over_the_open_one_and_binds_its_tenant() -> None:
    destinations = MoveDestinations(_load("WS=open:1,WS@t1=mine:2,ONLY@t2=theirs:3"))
    assert destinations.find("WS", TenantId("t1")) == MoveDestination("WS", TenantId("t1"), "mine", 2)
    assert destinations.find("WS ", TenantId("t9")) == MoveDestination("WS", None, "open", 1)
    assert destinations.find("ONLY", TenantId("t2")) is not None
    assert destinations.find("ONLY", TenantId("t1")) is None
    assert destinations.find("NOWHERE", TenantId("t1")) is None
