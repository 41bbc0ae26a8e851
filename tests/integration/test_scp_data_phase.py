"""The data phase pacsflow serves itself (ingress/scp/data_phase.py), against pynetdicom as the peer:
fragments reassembled, responses fragmented to the peer's limit, protocol errors answered by an
A-ABORT with nothing stored, and the SCP serving on after each."""

from __future__ import annotations

import struct
import uuid
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import Scp, ScpFactory
from tests.integration.test_scp_bad_input import assert_nothing_written, assert_still_serving, fresh
from tests.support import dicomdata
from tests.support.dimse import store_one
from tests.support.services import Broker, wait_for

pytestmark = pytest.mark.broker

PRIVATE_SOP_CLASS = "1.3.12.2.1107.5.9.1"  # Siemens CSA non-image, as some modalities send it


def associate(port: int, *, max_pdu: int = 16384) -> Association:
    ae = AE(ae_title="PYSCU")
    ae.maximum_pdu_size = max_pdu
    ae.requested_contexts = [
        build_context(CTImageStorage, [ExplicitVRLittleEndian]),
        build_context(Verification),
    ]
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSFLOW")
    assert assoc.is_established
    return assoc


def storage_context(assoc: Association) -> int:
    ids = [cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage]
    assert ids and ids[0] is not None
    return ids[0]


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (presentation context ID, message control header, fragment) PDVs."""
    items = b"".join(
        struct.pack(">LBB", 2 + len(data), context, control) + data for context, control, data in pdvs
    )
    return struct.pack(">BxL", 0x04, len(items)) + items


def c_store_command(sop_instance: str) -> bytes:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = sop_instance
    request.DataSet = BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def send_raw(assoc: Association, data: bytes) -> None:
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    assoc.dul.socket.socket.sendall(data)


def wait_aborted(scp: Scp, assoc: Association) -> None:
    """Until the SCP aborted the association and its peer saw it go."""
    wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), 15, "the peer to see the A-ABORT")
    wait_for(
        lambda: any(line.get("aborted") for line in scp.service.events("association_closed")),
        15,
        "the SCP to close the association as aborted",
    )


def dataset_of(ds: object, tmp_path: Path) -> bytes:
    path = dicomdata.write(ds, tmp_path / "instance.dcm")  # type: ignore[arg-type]
    data = path.read_bytes()
    return data[dicomdata.dataset_offset(data) :]


def test_a_store_sent_in_small_fragments_is_stored_byte_for_byte(
    start_scp: ScpFactory, broker: Broker
) -> None:
    scp = start_scp(broker.bootstrap, scp_max_pdu="4096")  # the peer must send many PDVs
    ds = fresh(rows=128, columns=128)  # 32 KiB of pixels
    assert store_one(scp.port, ds, ExplicitVRLittleEndian).Status == 0x0000
    [stored] = scp.files()
    assert dicomdata.dataset_bytes(stored) == dicomdata.dataset_bytes(
        dicomdata.write(ds, scp.data_dir / "sent.dcm")
    )


def test_a_response_is_fragmented_to_the_peers_limit(scp: Scp, tmp_path: Path) -> None:
    ds = fresh()
    del ds.SOPInstanceUID  # refused with a long ErrorComment: a response bigger than the limit
    assoc = associate(scp.port, max_pdu=64)
    try:
        status = assoc.send_c_store(dicomdata.write(ds, tmp_path / "nosop.dcm", as_is=True))
    finally:
        assoc.release()
    assert status.Status == 0xC001
    assert "SOPInstanceUID is missing" in status.ErrorComment
    assert_nothing_written(scp)


def test_a_released_association_is_closed_as_released(scp: Scp) -> None:
    assoc = associate(scp.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    wait_for(
        lambda: any(line.get("aborted") is False for line in scp.service.events("association_closed")),
        15,
        "the SCP to close the association as released",
    )


def test_a_pdv_of_a_context_never_accepted_aborts_and_stores_nothing(scp: Scp) -> None:
    ds = fresh()
    assoc = associate(scp.port)
    send_raw(assoc, p_data((99, 0x03, c_store_command(ds.SOPInstanceUID))))
    wait_aborted(scp, assoc)
    assert_nothing_written(scp)
    assert_still_serving(scp)


def test_an_association_aborted_within_a_dataset_stores_nothing(scp: Scp, tmp_path: Path) -> None:
    ds = fresh()
    dataset = dataset_of(ds, tmp_path)
    assoc = associate(scp.port)
    context = storage_context(assoc)
    send_raw(
        assoc, p_data((context, 0x03, c_store_command(ds.SOPInstanceUID)), (context, 0x00, dataset[:1000]))
    )
    assoc.abort()
    wait_for(
        lambda: any(line.get("aborted") for line in scp.service.events("association_closed")),
        15,
        "the SCP to close the association as aborted",
    )
    assert_nothing_written(scp)
    assert_still_serving(scp)


def test_a_pdu_above_the_negotiated_maximum_aborts(start_scp: ScpFactory, broker: Broker) -> None:
    scp = start_scp(broker.bootstrap, scp_max_pdu="4096")
    assoc = associate(scp.port)
    context = storage_context(assoc)
    send_raw(assoc, p_data((context, 0x00, b"\x00" * 5000)))
    wait_aborted(scp, assoc)
    assert_nothing_written(scp)
    assert_still_serving(scp)


def test_a_command_pacsflow_does_not_serve_aborts(scp: Scp) -> None:
    request = C_FIND()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.Identifier = BytesIO(b"")
    message = C_FIND_RQ()
    message.primitive_to_message(request)
    message.command_set.CommandDataSetType = 0x0101  # no identifier follows
    command = encode(message.command_set, True, True)
    assert command is not None
    assoc = associate(scp.port)
    send_raw(assoc, p_data((storage_context(assoc), 0x03, command)))
    wait_aborted(scp, assoc)
    assert_still_serving(scp)


def test_an_extra_sop_class_of_the_configuration_is_stored(start_scp: ScpFactory, broker: Broker) -> None:
    scp = start_scp(broker.bootstrap, scp_extra_sop_classes=PRIVATE_SOP_CLASS)
    run = uuid.uuid4().int % 10**12
    ds = dicomdata.ct_series(dicomdata.uid(run, 1), dicomdata.uid(run, 1, 1), 1)[0]
    ds.SOPClassUID = PRIVATE_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = UID(PRIVATE_SOP_CLASS)
    assert store_one(scp.port, ds, ExplicitVRLittleEndian).Status == 0x0000
    assert [p.stem for p in scp.files()] == [ds.SOPInstanceUID]
