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
        # Control characters and non-ASCII digits: only trailing NUL and space are padding, and a
        # pattern's ``$`` would let a final newline through.
        "1.2.3\n",
        "1.2.3\n\x00",
        "1.2.3\r",
        "1.2.3\r\n",
        "1.2.3\t",
        "\n1.2.3",
        " 1.2.3",
        "1.2\x003",
        "1.2.3\x7f",
        "1.2.3\x0b",
        "1.2.3\x0c",
        "1.2.3\u2028",
        "1.2.\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, DICOM says no
        "\uff11.2.3",  # FULLWIDTH DIGIT ONE
    ],
)
def test_invalid_uids_never_become_paths(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        Uid(value)


@pytest.mark.parametrize("value", ["default", "hospital_a", "H-1", "a" * 64])
def test_valid_tenants(value: str) -> None:
    assert TenantId(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "..",
        "a/b",
        "a b",
        "a" * 65,
        "tenant.x",
        "ü",
        "hospital_a\n",
        "hospital_a\r",
        "hospital_a\r\n",
        "hospital_a\t",
        "hospital_a ",
        "\nhospital_a",
        "hospital\x00a",
        "hospital_a\x00",
        "hospital_a\x7f",
        "hospital_\u0661",  # a non-ASCII digit
        "\u0131",  # dotless i: a letter, not an ASCII one
        "a" * 64 + "\n",  # 65 characters, 64 of them good
    ],
)
def test_invalid_tenants(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        TenantId(value)


@pytest.mark.parametrize(("kind", "value"), [(Uid, "1.2.3\n"), (TenantId, "hospital_a\n")])
def test_the_refusal_shows_the_control_character(kind: type[str], value: str) -> None:
    """An operator reading the refusal must see why two equal-looking names differ."""
    with pytest.raises(InvalidIdentifier, match=r"\\n"):
        kind(value)
