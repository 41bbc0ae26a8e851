"""What the SCP does with what it is sent: stores a C-STORE request's dataset (``StoreHandler``),
logs associations accepted and closed (pynetdicom event handlers). Dependencies arrive as bound
arguments.

A C-STORE is answered with success only after ``InstanceReceiver.receive_announced`` returned, that
is after the file and its events are durable; every failure gets its own status and an ErrorComment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.association import Association
from pynetdicom.events import Event
from structlog.contextvars import bound_contextvars

from ingress.scp.commands import Command
from ingress.scp.data_phase import Store
from ingress.scp.status import StoreStatus, error_comment, status_for
from ingress.scp.tenancy import tenant_for
from pipeline import log
from pipeline.errors import PacsflowError
from pipeline.ingest import Announced, InstanceReceiver, Source, new_trace_id
from pipeline.models import TenantId

_log = log.get(__name__)


def _called_ae(assoc: Association) -> str:
    request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before any handler runs
    return str(request.called_ae_title).strip() if request is not None else ""


class StoreHandler:
    """Stores the instances of C-STORE requests under the tenant of their association."""

    def __init__(
        self,
        receiver: InstanceReceiver,
        tenants: Mapping[str, TenantId],
        default_tenant: TenantId,
        on_stored: Callable[[], None],
    ) -> None:
        self._receiver = receiver
        self._tenants = tenants
        self._default_tenant = default_tenant
        self._on_stored = on_stored

    def for_association(self, assoc: Association) -> Store:
        """The ``Store`` of one association: its tenant and peer looked up once, not per instance."""
        requestor = assoc.requestor
        tenant = tenant_for(_called_ae(assoc), self._tenants, self._default_tenant)
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
            return self._store(announced, dataset, source)

        return store

    def _store(self, announced: Announced, dataset: bytes, source: Source) -> tuple[int, str | None]:
        context = {
            "tenant": source.tenant,
            "trace_id": source.trace_id,
            "sop_instance_uid": announced.sop_instance,
        }
        with bound_contextvars(**context):
            try:
                self._receiver.receive_announced(announced, dataset, source)
            except PacsflowError as exc:
                status = status_for(exc)
                _log.warning(
                    "instance_rejected",
                    status=f"0x{status:04X}",
                    reason=str(exc),
                    calling_ae=source.ae_title,
                    address=source.address,
                )
                return int(status), error_comment(exc)
            except Exception as exc:  # never report success on a failure we did not foresee
                _log.exception("instance_failed", calling_ae=source.ae_title)
                return int(StoreStatus.PROCESSING_FAILURE), error_comment(exc)
        self._on_stored()
        return int(StoreStatus.SUCCESS), None


def handle_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    _log.info(
        "association_accepted",
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=_called_ae(event.assoc),
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
