"""The final status of a C-GET or C-MOVE from its sub-operations (PS3.4 C.4.2.1.5, C.4.3.1.5)."""

from __future__ import annotations

import pytest

from ingress.scp.retrieval import _Counts, _final_status


@pytest.mark.parametrize(
    ("statuses", "final"),
    [
        ([0x0000, 0x0000], 0x0000),
        ([0x0000, None], 0xB000),  # some failed
        ([0x0000, 0xB007], 0xB000),  # a warning
        ([None, 0xA700], 0xA702),  # every one failed
        ([0xB000, None], 0xB000),  # a warning is no failure
    ],
)
def test_final_status(statuses: list[int | None], final: int) -> None:
    counts = _Counts(len(statuses))
    for n, status in enumerate(statuses):
        counts.count(f"1.2.{n}", status)
    assert _final_status(counts) == final
    assert counts.failed_uids == [
        f"1.2.{n}" for n, s in enumerate(statuses) if s not in (0x0000, 0xB000, 0xB007)
    ]
