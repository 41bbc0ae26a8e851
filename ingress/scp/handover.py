"""pynetdicom negotiates each association; ``data_phase`` serves it once it is established.

pynetdicom's acceptor runs an association on two threads: the association's, and a DUL thread
that reads the socket and drives the upper layer state machine (PS3.8 9.2). Here the DUL thread
reads only while the association is being negotiated: in state 6 (established, the
A-ASSOCIATE-AC sent) it leaves the socket alone and is stopped, and the association's thread,
instead of pynetdicom's reactor loop, runs ``data_phase.serve`` on the socket. Everything before
(the A-ASSOCIATE-RQ, EVT_REQUESTED and its handlers, the negotiation, EVT_ACCEPTED, TLS) and after
(the socket closed by pynetdicom's ``run_reactor``) is pynetdicom's.

pynetdicom is pinned (pyproject.toml): ``_is_transport_event``, ``_run_reactor`` and the state
names are its internals, covered by the SCP's integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

from ingress.scp import data_phase
from ingress.scp.data_phase import Store
from pipeline import log

StoreFor = Callable[[Association], Store]
"""The ``Store`` of one association (its tenant, its peer)."""

_log = log.get(__name__)

_ACCEPTING = "Sta3"  # awaiting the local A-ASSOCIATE response: the A-ASSOCIATE-AC is queued
_ESTABLISHED = "Sta6"


class _NegotiatingDul(DULServiceProvider):
    """pynetdicom's DUL, reading the socket only until the association is established."""

    def _is_transport_event(self) -> bool:
        if self.state_machine.current_state == _ESTABLISHED:
            return False  # the data phase's to read from here on
        return bool(super()._is_transport_event())


class _HandedOverAssociation(Association):
    """pynetdicom's acceptor association whose data phase is ``data_phase.serve``."""

    store_for: StoreFor

    def _run_reactor(self) -> None:
        established = self._sent_acceptance()
        self.dul.kill_dul()
        self.dul.join(timeout=5)
        if established:
            data_phase.serve(self, self.store_for(self))
            return
        self.is_established = False
        self.is_aborted = True
        evt.trigger(self, evt.EVT_ABORTED, {})

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
    data phase. The server (``ListenerServer``) holds the ``StoreFor`` as ``store_for``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom's factory makes its own classes and binds the server's handlers; only the
        # data phase changes, so the instances are given the subclasses before anything runs.
        assoc.__class__ = _HandedOverAssociation
        assoc.dul.__class__ = _NegotiatingDul
        server: Any = self.server
        handed: Any = assoc
        handed.store_for = server.store_for
        return assoc
