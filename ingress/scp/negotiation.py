"""Transfer syntax negotiation: for each presentation context, pacsflow accepts the first syntax the
modality proposed that it can store. A modality lists first the syntax its data is in (or the one
it would rather send); accepting another makes it convert before sending (dcmtk's storescu rewrites
Explicit VR files as Implicit VR, and fails on JPEG-LS it cannot decode), so what is stored would no
longer be what the modality holds. pynetdicom, left alone, takes the first syntax of the acceptor's
own list that was proposed, whatever the proposer's order (PS3.7 D.3.2 leaves the choice to the
acceptor; dcm4che chooses as pacsflow does). Its only hook is that list, one order per SOP class
and association, so ``accept_first_proposed`` orders it per association from the proposals; when
two contexts of one SOP class contradict each other (A before B, then B before A), the earlier
wins. A modality proposing one context for data in several syntaxes (dcmtk's ``storescu +C``) gets
its first, and must convert the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy
from graphlib import TopologicalSorter

from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext


def proposal_order(storable: Sequence[str], proposals: Sequence[Sequence[str]]) -> list[str]:
    """The proposed syntaxes that can be stored, ordered so that each proposal's first one comes
    before every other it lists; a proposal that contradicts an earlier one (lists after its first
    a syntax the earlier ones need before it) is left out, so the earlier one wins.

    Parameters
    ----------
    storable
        The transfer syntaxes pacsflow accepts for one SOP class.
    proposals
        The transfer syntaxes of each presentation context proposing that SOP class, in the order
        of the contexts and of the proposal.

    Returns
    -------
    list of str
        Only syntaxes that were proposed: the others do not take part in the negotiation, and a
        short list keeps the per-association cost small.
    """
    known = set(storable)
    wanted = [[syntax for syntax in proposal if syntax in known] for proposal in proposals]
    later: dict[str, set[str]] = {syntax: set() for proposal in wanted for syntax in proposal}
    for first, *rest in filter(None, wanted):
        if not any(_reaches(later, syntax, first) for syntax in rest):
            later[first].update(rest)
    order: TopologicalSorter[str] = TopologicalSorter()
    for syntax, after in later.items():
        order.add(syntax)
        for other in after:
            order.add(other, syntax)
    return list(order.static_order())


def _reaches(later: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    pending = [start]
    while pending:
        syntax = pending.pop()
        if syntax == goal:
            return True
        if syntax not in seen:
            seen.add(syntax)
            pending.extend(later[syntax])
    return False


def accept_first_proposed(event: Event) -> None:
    """EVT_REQUESTED, before pynetdicom negotiates: order this association's supported syntaxes so
    that each context gets its first proposed syntax that can be stored (see the module docstring)."""
    if event.assoc.is_rejected:  # by ``admission.reject_unknown_peers``: nothing to negotiate
        return
    request = event.assoc.requestor.primitive
    assert request is not None  # set before EVT_REQUESTED is triggered
    proposed: dict[str, list[Sequence[str]]] = {}
    for context in sorted(request.presentation_context_definition_list, key=lambda cx: cx.context_id or 0):
        proposed.setdefault(str(context.abstract_syntax), []).append(context.transfer_syntax)
    contexts: list[PresentationContext] = []
    for supported in event.assoc.acceptor.supported_contexts:
        order = proposal_order(supported.transfer_syntax, proposed.get(str(supported.abstract_syntax), []))
        if order:  # else nothing proposed can be stored, and pynetdicom rejects the context as is
            supported = copy(supported)  # the setter below gives it a list of its own
            supported.transfer_syntax = list(order)
        contexts.append(supported)
    event.assoc.acceptor.supported_contexts = contexts
