"""The order the SCP gives pynetdicom: each presentation context's first storable proposal first."""

from __future__ import annotations

from ingress.scp.negotiation import proposal_order

IMPLICIT, EXPLICIT, JPEG_LS, RLE, PRIVATE = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.5",
    "1.2.3.4.5.6",
)
STORABLE = [IMPLICIT, EXPLICIT, JPEG_LS, RLE]


def first_of(order: list[str], proposal: list[str]) -> str:
    """What pynetdicom accepts for a context: the first of its list that the context proposed."""
    return next(syntax for syntax in order if syntax in proposal)


def test_the_modalitys_first_storable_syntax_wins_in_every_context() -> None:
    proposals = [[JPEG_LS, EXPLICIT, IMPLICIT], [PRIVATE, RLE, IMPLICIT], [EXPLICIT, IMPLICIT]]
    order = proposal_order(STORABLE, proposals)
    assert [first_of(order, p) for p in proposals] == [JPEG_LS, RLE, EXPLICIT]
    assert PRIVATE not in order  # never proposed back: pacsflow cannot store it


def test_a_context_that_contradicts_an_earlier_one_gives_way_to_it() -> None:
    proposals = [[JPEG_LS, EXPLICIT], [EXPLICIT, JPEG_LS]]
    order = proposal_order(STORABLE, proposals)
    assert [first_of(order, p) for p in proposals] == [JPEG_LS, JPEG_LS]


def test_nothing_storable_proposed_leaves_nothing_to_order() -> None:
    assert proposal_order(STORABLE, [[PRIVATE]]) == []
    assert proposal_order(STORABLE, []) == []
