"""What the SCP does with what it is sent: stores a C-STORE request's dataset (``StoreHandler``),
logs associations accepted and closed (pynetdicom event handlers). Dependencies arrive as bound
arguments.

A C-STORE is answered with success only after ``InstanceReceiver.receive_announced`` returned, that
is after the file and its events are durable; every failure gets its own status and an ErrorComment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from structlog.contextvars import bound_contextvars

from ingress.scp.commands import C_STORE_RQ, Command
from ingress.scp.data_phase import Store
from ingress.scp.status import StoreStatus, error_comment, status_for
from ingress.scp.tenancy import called_ae, tenant_for
from pipeline import log
from pipeline.errors import PacsflowError
from pipeline.ingest import Announced, InstanceReceiver, Source, new_trace_id
from pipeline.metrics.guard import Recording
from pipeline.models import TenantId

if TYPE_CHECKING:  # imported by the server once the metrics folder is set (pipeline.metrics)
    from pipeline.metrics.instruments import Stores

_log = log.get(__name__)
_RECORDING = Recording("scp_store")


class StoreHandler:
    """Stores the instances of C-STORE requests under the tenant of their association."""

    def __init__(
        self,
        receiver: InstanceReceiver,
        tenants: Mapping[str, TenantId],
        default_tenant: TenantId,
        on_stored: Callable[[], None],
        counts: Stores | None = None,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        """``counts`` and ``observe``: where each instance's outcome and latency go (none: nowhere)."""
        self._receiver = receiver
        self._tenants = tenants
        self._default_tenant = default_tenant
        self._on_stored = on_stored
        self._counts = counts
        self._observe = observe

    def tenant_of(self, assoc: Association) -> TenantId:
        """The tenant of an association: its called AE title's (C-FIND, C-GET and C-MOVE too)."""
        return tenant_for(called_ae(assoc), self._tenants, self._default_tenant)

    def handle_store(self, event: Event) -> Dataset:
        """EVT_C_STORE, on associations pynetdicom's data phase serves (those that accepted a
        Query/Retrieve context, ``handover``): the same ``Store`` as ``data_phase``'s."""
        request = event.request
        assert isinstance(request, C_STORE)  # bound to EVT_C_STORE only
        command = Command(
            C_STORE_RQ,
            int(request.MessageID or 0),
            True,
            str(request.AffectedSOPClassUID or ""),
            str(request.AffectedSOPInstanceUID or ""),
        )
        dataset = request.DataSet.getvalue() if request.DataSet is not None else b""
        status, comment = self.for_association(event.assoc)(
            command, str(event.context.transfer_syntax), dataset
        )
        answer = Dataset()
        answer.Status = status
        if comment:
            answer.ErrorComment = comment
        return answer

    def for_association(self, assoc: Association) -> Store:
        """The ``Store`` of one association: its tenant and peer looked up once, not per instance."""
        requestor = assoc.requestor
        tenant = self.tenant_of(assoc)
        ae_title, address = str(requestor.ae_title).strip(), str(requestor.address)

        def store(command: Command, transfer_syntax: str, dataset: bytes) -> tuple[int, str | None]:
            source = Source(tenant=tenant, ae_title=ae_title, address=address, trace_id=new_trace_id())
            announced = Announced(
                command.sop_class,
                command.sop_instance,
                transfer_syntax,
                PYNETDICOM_IMPLEMENTATION_UID,
                PYNETDICOM_IMPLEMENTATION_VERSION,
            )
            started = time.perf_counter()
            status, comment, size = self._store(announced, dataset, source)
            with _RECORDING:  # the instance is stored (or not) whatever the metric's file does
                if self._counts is not None:
                    self._counts.count(tenant, status, size)
                if self._observe is not None:
                    self._observe(time.perf_counter() - started)
            return status, comment

        return store

    def _store(self, announced: Announced, dataset: bytes, source: Source) -> tuple[int, str | None, int]:
        """The status, ErrorComment and stored file's size (0: not stored) of one instance."""
        context = {
            "tenant": source.tenant,
            "trace_id": source.trace_id,
            "sop_instance_uid": announced.sop_instance,
        }
        with bound_contextvars(**context):
            try:
                stored = self._receiver.receive_announced(announced, dataset, source)
            except PacsflowError as exc:
                status = status_for(exc)
                _log.warning(
                    "instance_rejected",
                    status=f"0x{status:04X}",
                    reason=str(exc),
                    calling_ae=source.ae_title,
                    address=source.address,
                )
                return int(status), error_comment(exc), 0
            except Exception as exc:  # never report success on a failure we did not foresee
                _log.exception("instance_failed", calling_ae=source.ae_title)
                return int(StoreStatus.PROCESSING_FAILURE), error_comment(exc), 0
        self._on_stored()
        return int(StoreStatus.SUCCESS), None, stored.file_size


def handle_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    _log.info(
        "association_accepted",
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=called_ae(event.assoc),
        address=requestor.address,
        max_pdu=requestor.maximum_length,
    )


def handle_closed(event: Event) -> None:
    requestor = event.assoc.requestor
    _log.info(
        "association_closed",
        calling_ae=str(requestor.ae_title).strip(),
        address=requestor.address,
        aborted=event.assoc.is_aborted,
    )
