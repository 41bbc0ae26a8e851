"""Whole numbers in URLs are ASCII digits and nothing else."""

from __future__ import annotations

import pytest

from egress.wado.numbers import whole


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("0042", 42), ("-3", -3), ("+7", 7)])
def test_ascii_digits_are_numbers(text: str, value: int) -> None:
    assert whole(text) == value


@pytest.mark.parametrize(
    "text", ["", " 5", "5\n", "1_000", "\u0661", "\u00b2", "\uff11", "1.0", "0x10", "1e3", "9" * 19, "--1"]
)
def test_anything_else_is_not(text: str) -> None:
    assert whole(text) is None
