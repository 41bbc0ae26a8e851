"""pynetdicom event handlers: thin; their dependencies arrive as bound arguments.

A C-STORE is answered with success only after ``InstanceReceiver.receive`` returned, that is after
the file and its events are durable; every failure gets its own status and an ErrorComment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from structlog.contextvars import bound_contextvars

from ingress.scp.status import StoreStatus, error_comment, status_for
from ingress.scp.tenancy import tenant_for
from pipeline import log
from pipeline.errors import PacsflowError
from pipeline.ingest import InstanceReceiver, Source, new_trace_id
from pipeline.models import TenantId

_log = log.get(__name__)


def _status(status: StoreStatus, comment: str | None = None) -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if comment:
        response.ErrorComment = comment
    return response


def _called_ae(event: Event) -> str:
    request = event.assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before any handler runs
    return str(request.called_ae_title).strip() if request is not None else ""


def handle_store(
    event: Event,
    receiver: InstanceReceiver,
    tenants: Mapping[str, TenantId],
    default_tenant: TenantId,
    on_stored: Callable[[], None],
) -> Dataset:
    requestor = event.assoc.requestor
    source = Source(
        tenant=tenant_for(_called_ae(event), tenants, default_tenant),
        ae_title=str(requestor.ae_title).strip(),
        address=str(requestor.address),
        trace_id=new_trace_id(),
    )
    request = event.request
    announced = str(request.AffectedSOPInstanceUID or "") if isinstance(request, C_STORE) else ""
    with bound_contextvars(tenant=source.tenant, trace_id=source.trace_id, sop_instance_uid=announced):
        try:
            receiver.receive(event.file_meta, event.encoded_dataset(include_meta=False), source)
        except PacsflowError as exc:
            status = status_for(exc)
            _log.warning(
                "instance_rejected",
                status=f"0x{status:04X}",
                reason=str(exc),
                calling_ae=source.ae_title,
                address=source.address,
            )
            return _status(status, error_comment(exc))
        except Exception as exc:  # never report success on a failure we did not foresee
            _log.exception("instance_failed", calling_ae=source.ae_title)
            return _status(StoreStatus.PROCESSING_FAILURE, error_comment(exc))
    on_stored()
    return _status(StoreStatus.SUCCESS)


def handle_accepted(event: Event) -> None:
    requestor = event.assoc.requestor
    _log.info(
        "association_accepted",
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=_called_ae(event),
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
