"""pynetdicom negotiates each association; ``data_phase`` serves it once it is established.

pynetdicom's acceptor runs an association on two threads: the association's, and a DUL thread
that reads the socket and drives the upper layer state machine (PS3.8 9.2). Here the DUL thread
reads only while the association is being negotiated: in state 6 (established, the
A-ASSOCIATE-AC sent) it leaves the socket alone and is stopped, and the association's thread,
instead of pynetdicom's reactor loop, runs ``data_phase.serve`` on the socket. Everything before
(the A-ASSOCIATE-RQ, EVT_REQUESTED and its handlers, the negotiation, EVT_ACCEPTED, TLS) and after
(the socket closed by pynetdicom's ``run_reactor``) is pynetdicom's.

An association that accepted a Query/Retrieve context (``query.MODELS``) is the exception: it is
served by pynetdicom's own data phase (its DUL keeps reading, its reactor runs), whose C-FIND,
C-ECHO and C-STORE go to the server's handlers and whose C-GET and C-MOVE go to
``retrieval.Retriever``. Those associations are few and their requests slow (database, files):
``data_phase`` is the fast path of the many storage-only ones.

pynetdicom is pinned (pyproject.toml): ``_is_transport_event``, ``_run_reactor`` and the state
names are its internals, covered by the SCP's integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE, DimseServiceType
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

from ingress.scp import data_phase
from ingress.scp.data_phase import Store
from ingress.scp.query import MODELS
from ingress.scp.retrieval import RETRIEVE_MODELS, Retriever
from pipeline import log

StoreFor = Callable[[Association], Store]
"""The ``Store`` of one association (its tenant, its peer)."""

_log = log.get(__name__)

_ACCEPTING = "Sta3"  # awaiting the local A-ASSOCIATE response: the A-ASSOCIATE-AC is queued
_ESTABLISHED = "Sta6"


def serves_query_retrieve(assoc: Association) -> bool:
    """Whether pynetdicom's data phase serves ``assoc``: it accepted a Query/Retrieve context. Known
    once the association is accepted (its contexts are set before the A-ASSOCIATE-AC is sent)."""
    return any(str(context.abstract_syntax) in MODELS for context in assoc.accepted_contexts)


class _NegotiatingDul(DULServiceProvider):
    """pynetdicom's DUL, reading the socket only until the association is established (unless
    pynetdicom's data phase serves it)."""

    def _is_transport_event(self) -> bool:
        if self.state_machine.current_state == _ESTABLISHED and not self._keeps_reading():
            return False  # the data phase's to read from here on
        return bool(super()._is_transport_event())

    def _keeps_reading(self) -> bool:
        keeps: bool | None = getattr(self, "_query_retrieve", None)
        if keeps is None:  # decided once: this runs on every pass of the DUL's loop
            keeps = self._query_retrieve = serves_query_retrieve(self.assoc)
        return keeps


class _HandedOverAssociation(Association):
    """pynetdicom's acceptor association whose data phase is ``data_phase.serve``."""

    store_for: StoreFor
    retriever: Retriever

    def _run_reactor(self) -> None:
        if serves_query_retrieve(self):
            super()._run_reactor()
            return
        established = self._sent_acceptance()
        self.dul.kill_dul()
        self.dul.join(timeout=5)
        if established:
            data_phase.serve(self, self.store_for(self))
            return
        self.is_established = False
        self.is_aborted = True
        evt.trigger(self, evt.EVT_ABORTED, {})

    def _serve_request(self, msg: DimseServiceType, context_id: int) -> None:
        """A C-GET or C-MOVE request on a GET or MOVE context goes to ``retrieval`` (see there why);
        anything else to pynetdicom, with its guards (a release under way, a message that is no
        valid request, an unknown context, a SOP class it has no service for)."""
        context = self._accepted_cx.get(context_id)
        if (
            self._sent_release
            or not isinstance(msg, C_GET | C_MOVE)
            or not msg.is_valid_request
            or context is None
            or str(context.abstract_syntax) not in RETRIEVE_MODELS
        ):
            super()._serve_request(msg, context_id)
            return
        # As pynetdicom's own service does: C-CANCELs before this request are not for it, and the
        # reactor stays out of the way of the sub-operations' messages meanwhile.
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            self.retriever.serve(self, msg, context)
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}

    def _sent_acceptance(self) -> bool:
        """Wait until the DUL thread has sent the A-ASSOCIATE-AC (the association was accepted,
        its acceptance queued to that thread); whether it did (else the peer went meanwhile)."""
        deadline = time.monotonic() + (self.acse_timeout or 30)
        while True:
            state = self.dul.state_machine.current_state
            if state == _ESTABLISHED:
                return True
            if state != _ACCEPTING or not self.dul.is_alive() or time.monotonic() > deadline:
                _log.warning("association_not_established", state=state, address=str(self.requestor.address))
                return False
            time.sleep(0.0002)  # at most one pass of the DUL's loop: it sends as soon as it sees it


class HandOverRequestHandler(RequestHandler):
    """Creates pynetdicom's acceptor association for a connection, with ``_HandedOverAssociation``'s
    data phase. The server (``ListenerServer``) holds the ``StoreFor`` as ``store_for`` and the
    ``Retriever`` as ``retriever``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom's factory makes its own classes and binds the server's handlers; only the
        # data phase changes, so the instances are given the subclasses before anything runs.
        assoc.__class__ = _HandedOverAssociation
        assoc.dul.__class__ = _NegotiatingDul
        server: Any = self.server
        handed: Any = assoc
        handed.store_for = server.store_for
        handed.retriever = server.retriever
        return assoc
