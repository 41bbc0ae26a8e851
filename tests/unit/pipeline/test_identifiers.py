from __future__ import annotations

import pytest

from pipeline.errors import InvalidIdentifier
from pipeline.models import TenantId, Uid


@pytest.mark.parametrize("value", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0", "1." + "2" * 62])
def test_valid_uids(value: str) -> None:
    assert Uid(value) == value


def test_wire_padding_is_removed() -> None:
    assert Uid("1.2.3\x00") == "1.2.3"
    assert Uid("1.2.3 ") == "1.2.3"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1.2.abc",
        "../../etc/passwd",
        "1..2",
        ".1.2",
        "1.2.",
        "1/2",
        "1.2\\3",
        "1." + "2" * 63,
        "1.2\n3",
        None,
    ],
)
def test_invalid_uids_never_become_paths(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        Uid(value)


@pytest.mark.parametrize("value", ["default", "hospital_a", "H-1", "a" * 64])
def test_valid_tenants(value: str) -> None:
    assert TenantId(value) == value


@pytest.mark.parametrize("value", ["", "..", "a/b", "a b", "a" * 65, "tenant.x", "ü"])
def test_invalid_tenants(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        TenantId(value)
