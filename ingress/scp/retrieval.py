"""C-GET and C-MOVE (PS3.4 C.4.2, C.4.3): the instances an identifier names, sent as C-STORE
sub-operations, on the same association (GET) or on a new one to a configured destination (MOVE).

Why not pynetdicom's own C-GET and C-MOVE service: its handlers must first yield a number of
sub-operations (and, for C-MOVE, a destination it then associates with), so an identifier that
cannot be answered or a database that is away could only end in a status without an ErrorComment,
or after an association to the destination; and it re-encodes every instance through pydicom.
Here each instance stored in a syntax the peer accepted is sent from its file as it is (pynetdicom's
chunked send of the dataset after the file meta), byte for byte; otherwise it is converted like
WADO-RS converts (``pipeline.conversion``), or counted failed when it cannot be. The messages are
still pynetdicom's (``send_c_store``, ``dimse.send_msg``) on pynetdicom's own data phase.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ingress.scp.destinations import MoveDestinations
from ingress.scp.index import IndexReader, IndexUnavailable
from ingress.scp.query import MODELS, retrieval
from ingress.scp.status import (
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    UNABLE_TO_PROCESS,
    error_comment,
)
from pipeline import log
from pipeline.conversion import can_transcode, reencode
from pipeline.models import TenantId
from pipeline.stores import instances, search
from pipeline.stores.instances import StoredInstance
from pipeline.stores.search import InvalidQuery, Search

_log = log.get(__name__)

MOVE_MODELS = frozenset(
    str(uid)
    for uid in (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
)
RETRIEVE_MODELS = MOVE_MODELS | frozenset(
    str(uid)
    for uid in (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
)
"""The C-GET and C-MOVE SOP classes served here (their roots in ``query.MODELS``)."""

SUCCESS = 0x0000
SOME_FAILED = 0xB000
OUT_OF_RESOURCES = 0xA701  # unable to calculate the number of matches
CANNOT_PERFORM = 0xA702  # unable to perform sub-operations
DESTINATION_UNKNOWN = 0xA801
_WARNINGS = (0xB000, 0xB006, 0xB007)
_MOST = 65535  # the counts are US (PS3.7 C.4.2.1.4 ...)
_MOST_CONTEXTS = 128
_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

Request = C_GET | C_MOVE


class _Refused(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass
class _Counts:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def count(self, sop_uid: str, status: int | None) -> None:
        self.remaining -= 1
        if status == SUCCESS:
            self.completed += 1
        elif status in _WARNINGS:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_uid)


def _target(instance: StoredInstance, contexts: Sequence[PresentationContext]) -> str | None:
    """The syntax to send ``instance`` in over ``contexts`` (those accepted for pacsflow as the
    storage SCU): its own when accepted, else the first accepted it can be converted to."""
    offered = [str(cx.transfer_syntax[0]) for cx in contexts if cx.abstract_syntax == instance.sop_class_uid]
    if instance.transfer_syntax_uid in offered:
        return instance.transfer_syntax_uid
    return next((ts for ts in offered if can_transcode(instance.transfer_syntax_uid, ts)), None)


def proposals(found: Sequence[StoredInstance]) -> list[PresentationContext]:
    """What a C-MOVE proposes to its destination: each SOP class in each syntax it is stored in, one
    context each, then Explicit and Implicit VR Little Endian to convert to where those are refused.
    At most 128 contexts (PS3.8 9.3.2.2): the instances of SOP classes beyond fail."""
    stored: dict[str, list[str]] = {}
    for instance in found:
        syntaxes = stored.setdefault(instance.sop_class_uid, [])
        if instance.transfer_syntax_uid not in syntaxes:
            syntaxes.append(instance.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in stored.items():
        contexts += [build_context(sop_class, [syntax]) for syntax in syntaxes]
        fallback: list[str] = [syntax for syntax in _NATIVE if syntax not in syntaxes]
        if fallback:
            contexts.append(build_context(sop_class, fallback))
    if len(contexts) > _MOST_CONTEXTS:
        _log.warning("move_contexts_cut", proposed=_MOST_CONTEXTS, wanted=len(contexts))
    return contexts[:_MOST_CONTEXTS]


class Retriever:
    """Serves C-GET and C-MOVE requests, for the tenant of each association."""

    def __init__(
        self,
        index: IndexReader,
        storage_root: Path,
        tenant_of: Callable[[Association], TenantId],
        destinations: MoveDestinations,
    ) -> None:
        self._index = index
        self._root = storage_root
        self._tenant_of = tenant_of
        self._destinations = destinations

    def serve(self, assoc: Association, request: Request, context: PresentationContext) -> None:
        """Answer ``request`` (received on ``context``) with its sub-operations and responses."""
        syntax = context.transfer_syntax[0]
        reply = _Reply(assoc, request, int(context.context_id or 0), syntax)
        calling = str(assoc.requestor.ae_title).strip()
        what = "move" if isinstance(request, C_MOVE) else "get"
        model = UID(str(context.abstract_syntax))
        try:
            if (model in MOVE_MODELS) != isinstance(request, C_MOVE):
                # PS3.7 9.3: a message is of its context's SOP class; a C-GET on a MOVE context
                # would otherwise be served as a GET its peer never negotiated.
                raise _Refused(
                    IDENTIFIER_DOES_NOT_MATCH,
                    f"a C-{what.upper()} request on a context of {model.name}",
                )
            tenant = self._tenant_of(assoc)
            destination = None
            if isinstance(request, C_MOVE):
                title = str(request.MoveDestination or "").strip()
                destination = self._destinations.find(title, tenant)
                if destination is None:
                    raise _Refused(DESTINATION_UNKNOWN, f"move destination {title!r} is not known")
            identifier = self._identifier(request, syntax)
            # The context's SOP class, not the request's (which ``handover`` does not check).
            found = self._instances(tenant, identifier, str(context.abstract_syntax))
            if destination is None or not found:
                self._send(reply, assoc, found, what)
                return
            store = assoc.ae.associate(
                destination.host, destination.port, contexts=proposals(found), ae_title=destination.ae_title
            )
            if not store.is_established:
                raise _Refused(
                    CANNOT_PERFORM,
                    f"{destination.ae_title} ({destination.host}:{destination.port}) refused the association",
                )
            try:
                self._send(reply, store, found, what, calling, int(request.MessageID or 0))
            finally:
                if store.is_established:
                    store.release()
        except _Refused as refused:
            _log.warning(
                f"{what}_refused", calling_ae=calling, status=f"0x{refused.status:04X}", reason=str(refused)
            )
            reply.final(refused.status, comment=str(refused))
        except Exception as exc:  # never a silent end: a failure that says why
            _log.exception(f"{what}_failed", calling_ae=calling)
            reply.final(UNABLE_TO_PROCESS, comment=error_comment(exc))

    def _identifier(self, request: Request, syntax: UID) -> Dataset:
        try:
            assert request.Identifier is not None
            return decode(
                request.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
        except Exception as exc:
            raise _Refused(IDENTIFIER_DOES_NOT_MATCH, f"the identifier cannot be read: {exc}") from exc

    def _instances(self, tenant: TenantId, identifier: Dataset, sop_class: str) -> list[StoredInstance]:
        try:
            # At most _MOST, in one read of their UIDs (one more: whether there are more).
            query = retrieval(identifier, tenant, MODELS[sop_class], page_size=_MOST)
            found = self._index.run(lambda pool: _find(pool, tenant, query))
        except InvalidQuery as exc:
            raise _Refused(IDENTIFIER_DOES_NOT_MATCH, str(exc)) from exc
        except IndexUnavailable as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc)) from exc
        if found is None:
            raise _Refused(OUT_OF_RESOURCES, f"more than {_MOST} instances match: retrieve them in parts")
        return found

    def _send(
        self,
        reply: _Reply,
        sender: Association,
        found: Sequence[StoredInstance],
        what: str,
        originator: str | None = None,
        originator_id: int | None = None,
    ) -> None:
        counts = _Counts(len(found))
        contexts = [cx for cx in sender.accepted_contexts if cx.as_scu]
        for number, instance in enumerate(found, start=1):
            if reply.cancelled():
                reply.final(CANCELLED, counts, with_remaining=True)
                _log.info(f"{what}_cancelled", completed=counts.completed, remaining=counts.remaining)
                return
            status = self._store(sender, instance, contexts, number, originator, originator_id)
            counts.count(instance.sop_uid, status)
            if counts.remaining:
                reply.pending(counts)
        reply.final(_final_status(counts), counts)
        _log.info(
            f"{what}_done",
            calling_ae=str(reply.assoc.requestor.ae_title).strip(),
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
        )

    def _store(
        self,
        sender: Association,
        instance: StoredInstance,
        contexts: Sequence[PresentationContext],
        message_id: int,
        originator: str | None,
        originator_id: int | None,
    ) -> int | None:
        """The C-STORE sub-operation's status; None when it could not be sent."""
        target = _target(instance, contexts)
        if target is None:
            _log.warning(
                "retrieve_no_context",
                sop_instance_uid=instance.sop_uid,
                sop_class_uid=instance.sop_class_uid,
                transfer_syntax=instance.transfer_syntax_uid,
            )
            return None
        path = self._root / instance.file_path
        try:
            payload: Path | Dataset = path
            if target != instance.transfer_syntax_uid:
                payload = dcmread(io.BytesIO(reencode(path, target)))
            status = sender.send_c_store(
                payload, msg_id=message_id, originator_aet=originator, originator_id=originator_id
            )
        except Exception as exc:
            _log.warning("retrieve_store_failed", sop_instance_uid=instance.sop_uid, reason=str(exc))
            return None
        return int(status.Status) if status and "Status" in status else None


def _final_status(counts: _Counts) -> int:
    """Success when every sub-operation succeeded; 0xA702 when every one failed, 0xB000 when only
    some failed or had warnings (PS3.4 C.4.2.1.5, C.4.3.1.5)."""
    if not (counts.failed or counts.warning):
        return SUCCESS
    if counts.failed == counts.completed + counts.failed + counts.warning:
        return CANNOT_PERFORM
    return SOME_FAILED


async def _find(pool: asyncpg.Pool, tenant: TenantId, query: Search) -> list[StoredInstance] | None:
    """The instances ``query`` names; None when there are more than its limit."""
    async with pool.acquire() as conn:
        uids, more = await search.instance_uids(conn, query)
    return None if more else await instances.find_each(pool, tenant, uids)


class _Reply:
    """The C-GET or C-MOVE responses to one request."""

    def __init__(self, assoc: Association, request: Request, context_id: int, syntax: UID) -> None:
        self.assoc = assoc
        self._request = request
        self._context_id = context_id
        self._syntax = syntax

    def cancelled(self) -> bool:
        return self.assoc.dimse.cancel_req.pop(int(self._request.MessageID or 0), None) is not None

    def _response(self, status: int) -> Request:
        rsp: Request = C_MOVE() if isinstance(self._request, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = self._request.MessageID
        rsp.AffectedSOPClassUID = self._request.AffectedSOPClassUID
        rsp.Status = status
        return rsp

    def pending(self, counts: _Counts) -> None:
        rsp = self._response(PENDING)
        self._counts(rsp, counts, with_remaining=True)
        self.assoc.dimse.send_msg(rsp, self._context_id)

    def final(
        self,
        status: int,
        counts: _Counts | None = None,
        *,
        comment: str | None = None,
        with_remaining: bool = False,
    ) -> None:
        rsp = self._response(status)
        if comment:
            rsp.ErrorComment = error_comment(Exception(comment))  # type: ignore[assignment]
        if counts is not None:
            self._counts(rsp, counts, with_remaining=with_remaining)
            if counts.failed_uids:
                failed = Dataset()
                failed.FailedSOPInstanceUIDList = counts.failed_uids
                syntax = self._syntax
                data = encode(failed, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
                rsp.Identifier = io.BytesIO(data or b"")
        self.assoc.dimse.send_msg(rsp, self._context_id)

    @staticmethod
    def _counts(rsp: Request, counts: _Counts, *, with_remaining: bool) -> None:
        if with_remaining:
            rsp.NumberOfRemainingSuboperations = counts.remaining
        rsp.NumberOfCompletedSuboperations = counts.completed
        rsp.NumberOfFailedSuboperations = counts.failed
        rsp.NumberOfWarningSuboperations = counts.warning
