"""Refusing an association at its request: the known-peers rule (``peers``) in pynetdicom.

Why an EVT_REQUESTED handler: pynetdicom's own refusals (``AE.require_calling_aet`` and
``require_called_aet``) are one list of titles for the whole AE, with no tenant and no address,
and the ACSE and Association classes that decide them are created by pynetdicom's request handler,
so overriding them would mean replacing that handler too. EVT_REQUESTED is triggered on the
association's thread once the A-ASSOCIATE-RQ has arrived and before anything is negotiated, and
pynetdicom's acceptor reactor then negotiates only if the association is neither aborted nor
rejected (``Association.run_reactor``): the hook pynetdicom leaves for this. The rejection itself
is done as pynetdicom does its own (``ACSE._negotiate_as_acceptor``): A-ASSOCIATE-RJ, EVT_REJECTED,
then ``kill``, which waits until the peer has been sent the rejection and closed.
"""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.events import Event

from ingress.scp.peers import KnownPeers, Refusal
from pipeline import log

_log = log.get(__name__)

_REJECTED_PERMANENT = 0x01
_REJECTED_TRANSIENT = 0x02
_SERVICE_USER = 0x01
_NO_REASON_GIVEN = Refusal("the peer could not be checked", 0x01)


def reject_unknown_peers(event: Event, peers: KnownPeers) -> None:
    """EVT_REQUESTED: reject the association unless ``peers`` lets its peer in. Bound before any
    other EVT_REQUESTED handler, which then only sees a rejected association."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling = str(request.calling_ae_title).strip() if request is not None else ""
    called = str(request.called_ae_title).strip() if request is not None else ""
    address = str(assoc.requestor.address)
    result = _REJECTED_PERMANENT
    try:
        refusal = peers.refusal(calling, called, address)
    except Exception:
        # pynetdicom logs and forgets a notification handler's exception, and would then accept:
        # refuse instead, for now (transient), and say why in the log.
        _log.exception("peer_check_failed", address=address, calling_ae=calling, called_ae=called)
        refusal, result = _NO_REASON_GIVEN, _REJECTED_TRANSIENT
    if refusal is None:
        return
    _log.warning(
        "association_rejected",
        address=address,
        calling_ae=calling,
        called_ae=called,
        reason=refusal.reason,
    )
    assoc.acse.send_reject(result, _SERVICE_USER, refusal.diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
