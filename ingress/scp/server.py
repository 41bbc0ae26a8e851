"""The SCP process: pynetdicom accepts associations on its threads; the asyncio loop publishes.

Each association runs on its own thread: pynetdicom negotiates it, ``data_phase`` serves it
(``handover``), and answers each C-STORE only after its instance and events are durable
(``InstanceReceiver``); the loop's only job is the outbox publisher, woken after stores.

Transfer syntax negotiation is ``negotiation.accept_first_proposed``: the modality's order wins.

Query/Retrieve (C-FIND, C-GET, C-MOVE; ``query``, ``retrieval``) reads the PostgreSQL index through
one pool, opened here with no connection made until a query needs one (storing never does), and
used from the association threads on this loop (``index``).
Known peers (``peers``) are checked at the association request (``admission``), on the plain port
and on the TLS port alike: both are served by the same AE with the same handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
import threading
import time
from typing import Any

import asyncpg
from aiohttp import web
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from ingress.scp import tls
from ingress.scp.admission import reject_unknown_peers
from ingress.scp.destinations import MoveDestinations
from ingress.scp.handlers import StoreHandler, handle_accepted, handle_closed
from ingress.scp.handover import HandOverRequestHandler, StoreFor
from ingress.scp.index import IndexReader
from ingress.scp.negotiation import accept_first_proposed
from ingress.scp.peers import KnownPeers
from ingress.scp.query import MODELS, FindHandler
from ingress.scp.retrieval import Retriever
from pipeline import lifecycle, listeners, log
from pipeline.errors import PacsflowError
from pipeline.ingest import InstanceReceiver
from pipeline.metrics import exposition, folder, probes
from pipeline.outbox import Outbox, OutboxPublisher
from pipeline.settings import Settings
from pipeline.stores.files import StorageLayout

_log = log.get(__name__)

# pynetdicom's "standard" handlers describe every PDU and DIMSE message for its INFO and DEBUG log,
# which pacsflow keeps quiet (pipeline.log): their work would be thrown away on every association.
_config.LOG_HANDLER_LEVEL = "none"
_config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
# C-GET and C-MOVE send a stored file as it is: pynetdicom reads the dataset after the file meta
# in chunks rather than decoding and encoding it again (``retrieval``).
_config.STORE_SEND_CHUNKED_DATASET = True

# An association's thread back from an fsync waits for the interpreter lock while another thread
# holds it (the publisher, another association): at most this long, not Python's 5 ms.
_SWITCH_INTERVAL_S = 0.001

# A process serving associations lets the others sharing the listener take a new connection first,
# this long per association it serves: each process is one core, and the kernel hands a connection
# to whichever process asks first, which left one process with three of four associations.
_YIELD_PER_ASSOCIATION_S = 0.003
_YIELD_AT_MOST_S = 0.024


class _SharedContexts(list[PresentationContext]):
    """The server's supported presentation contexts, which pynetdicom deep-copies for every
    association (``RequestHandler._create_association``): some 30 ms of CPU per association for
    every storage SOP class in every syntax. Nothing changes them in place (pynetdicom's
    negotiation reads them, ``negotiation.accept_first_proposed`` copies those it reorders), so a
    list of the same contexts does."""

    def __deepcopy__(self, memo: dict[int, object]) -> list[PresentationContext]:
        return list(self)


def _associations_here() -> int:
    return sum(1 for thread in threading.enumerate() if isinstance(thread, Association))


class ListenerServer(ThreadedAssociationServer):
    """Accepts on a socket bound by ``pipeline.listeners``, maybe shared with this install's other
    SCP processes (each accepts the connections it is first to take), and hands each association's
    data phase to ``data_phase`` with the ``Store`` that ``store_for`` gives it."""

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[EventHandlerType] | None = None,
        *,
        listener: socket.socket,
        store_for: StoreFor,
        retriever: Retriever,
    ) -> None:
        self._listener = listener
        self.store_for = store_for
        self.retriever = retriever
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, evt_handlers, request_handler=HandOverRequestHandler
        )
        self.contexts = _SharedContexts(self.contexts)

    def server_bind(self) -> None:
        # Not pynetdicom's server_bind: it would bind the socket socketserver made, and give the
        # listener a timeout, which must stay non-blocking when shared (listeners.bind).
        assert self.socket is not None
        self.socket.close()
        self.socket = self._listener
        self.server_address = self._listener.getsockname()

    def server_activate(self) -> None:
        """The listener already listens."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        busy = _associations_here()
        if busy:
            time.sleep(min(busy * _YIELD_PER_ASSOCIATION_S, _YIELD_AT_MOST_S))
        # Non-blocking: BlockingIOError when another process took it meanwhile, and socketserver
        # goes back to waiting (BaseServer._handle_request_noblock).
        client, address = self.socket.accept()
        if self.ssl_context is not None:
            # Not pynetdicom's wrap, which shakes hands here, on the one thread that accepts: a
            # peer that connects and says nothing would hold up every other connection.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake first, if any, then the association."""
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.ae.acse_timeout)
                request.do_handshake()
                request.settimeout(None)  # as pynetdicom has its sockets: blocking, its own timers
            except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
                _log.warning(
                    "tls_handshake_failed",
                    address=str(client_address[0]),
                    reason=str(getattr(exc, "reason", None) or exc),
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        # Only this process's descriptor: pynetdicom's shutdown(SHUT_RDWR) would stop the socket
        # listening for every process that shares it (the other SCP processes, `pacsflow dev`).
        assert self.socket is not None
        self.socket.close()

    def shutdown(self) -> None:
        # Made with make_server, not start_server: the AE does not list it, so skip pynetdicom's
        # bookkeeping (AssociationServer.shutdown) and stop the serving loop and socket directly.
        super(AssociationServer, self).shutdown()
        self.server_close()


def build_ae(settings: Settings) -> AE:
    """An AE accepting every storage SOP class (plus configured extras) in every transfer syntax,
    Verification, and the Patient and Study Root Query/Retrieve FIND, GET and MOVE classes.

    The storage classes take either role (SCP/SCU role selection, PS3.7 D.3.3.4): a C-GET
    requestor proposes to be their SCP, to receive the instances pacsflow sends back on its
    association; a modality that proposes nothing keeps the default, pacsflow as their SCP."""
    ae = AE(ae_title=settings.scp_ae_title)
    ae.maximum_associations = settings.scp_max_associations
    ae.maximum_pdu_size = settings.scp_max_pdu
    ae.acse_timeout = settings.scp_acse_timeout_s
    # The TCP connect of a C-MOVE's association to its destination: one that drops packets fails
    # within the ACSE timeout, not the system's (about 2 minutes).
    ae.connection_timeout = settings.scp_acse_timeout_s
    ae.dimse_timeout = settings.scp_dimse_timeout_s
    ae.network_timeout = settings.scp_network_timeout_s
    syntaxes = [str(uid) for uid in AllTransferSyntaxes]
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    for uid in settings.scp_extra_sop_classes:
        ae.add_supported_context(uid, syntaxes, scu_role=True, scp_role=True)
    ae.add_supported_context(Verification)
    for model in MODELS:
        ae.add_supported_context(model)
    return ae


def _probes(settings: Settings) -> web.Application:
    """``/metrics``, ``/ready`` (the storage root writable) and ``/health`` of the SCP."""

    async def storage_writable() -> None:
        if not os.access(settings.storage_root, os.W_OK | os.X_OK):
            raise PacsflowError(f"the storage root {settings.storage_root} is not writable")

    async def outbox() -> list[exposition.Family]:
        # `pacsflow import` runs where the SCP's storage and outboxes are, and serves no metrics of
        # its own; the SCP's publishers adopt what an import leaves unpublished.
        return await asyncio.to_thread(exposition.outbox_families, settings, "scp", "import")

    return probes.application("scp", {"storage": storage_writable}, {"outbox": outbox})


async def serve(settings: Settings) -> None:
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    folder.prepare(settings, "scp")  # before prometheus_client is imported (pipeline.metrics)
    from pipeline.metrics import instruments

    stop = lifecycle.stop_on_signals()
    # A bad certificate or key ends the start before any port is taken.
    context = tls.server_context(settings) if settings.scp_tls_cert else None
    # Handed down by `pacsflow dev` or `pacsflow scp` with several processes, else bound here,
    # before anything is opened: a port another server holds ends the start at once.
    sockets = listeners.listen_all(settings.env, listeners.scp(settings))
    probe_socket = sockets.pop(listeners.INHERITED_METRICS_FD, None)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    outbox = Outbox.open_slot(settings.outbox_dir, "scp")
    publisher = OutboxPublisher(settings, outbox)
    receiver = InstanceReceiver(StorageLayout(settings.storage_root), outbox, settings.node_id)
    stores = StoreHandler(
        receiver,
        settings.scp_tenants,
        settings.default_tenant,
        publisher.notify,
        instruments.Stores("scp"),
        instruments.CSTORE_SECONDS.observe,
    )
    # No connection is made here: the first query makes one, and fails on its own while the
    # database is away; storing never needs it.
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4, timeout=10)
    index = IndexReader(pool, asyncio.get_running_loop(), settings.scp_dimse_timeout_s or 60)
    retriever = Retriever(
        index, settings.storage_root, stores.tenant_of, MoveDestinations(settings.scp_move_destinations)
    )
    handlers: list[EventHandlerType] = [
        # Bound first: a refused peer is answered before anything is negotiated for it.
        (evt.EVT_REQUESTED, reject_unknown_peers, [KnownPeers.from_settings(settings)]),
        (evt.EVT_REQUESTED, accept_first_proposed),
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_RELEASED, handle_closed),
        (evt.EVT_ABORTED, handle_closed),
        # Only on associations that accepted a Query/Retrieve context (``handover``).
        # Read a page at a time, as large as a QIDO-RS answer may be.
        (evt.EVT_C_FIND, FindHandler(index, stores.tenant_of, settings.qido_max_limit)),
        (evt.EVT_C_STORE, stores.handle_store),
    ]
    ae = build_ae(settings)
    servers = [
        ae.make_server(
            (settings.scp_host, sock.getsockname()[1]),
            evt_handlers=handlers,
            ssl_context=context if variable == listeners.INHERITED_TLS_FD else None,
            server_class=ListenerServer,
            listener=sock,
            store_for=stores.for_association,
            retriever=retriever,
        )
        for variable, sock in sockets.items()
    ]
    for server in servers:
        name = f"scp-acceptor-{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    publishing = asyncio.create_task(publisher.run(), name="outbox-publisher")
    publishing.add_done_callback(lambda _: stop.set())  # it only ends on a bug: exit, be restarted
    probing = await probes.start(_probes(settings), probe_socket) if probe_socket is not None else None
    _log.info(
        "scp_listening",
        host=settings.scp_host,
        port=settings.scp_port if settings.scp_plain else None,
        tls_port=settings.scp_tls_port if context is not None else None,
        client_certificates=bool(settings.scp_tls_ca),
        known_peers=len(settings.scp_peers),
        ae_title=settings.scp_ae_title,
        storage_root=str(settings.storage_root),
        pending_events=outbox.pending(),
    )
    lifecycle.notify_ready()
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.shutdown()
        if probing is not None:
            await probing.cleanup()
        await publisher.stop()
        publishing.cancel()
        outbox.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.close(), 5)  # a query still running is cut off
        pool.terminate()
        _log.info("scp_stopped", published=publisher.published)
    if publishing.done() and not publishing.cancelled() and publishing.exception():
        raise PacsflowError("the outbox publisher failed") from publishing.exception()
