"""DIMSE command sets as pacsflow's data phase reads and writes them, checked against pynetdicom's
own encoder and decoder (the peers' side)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset

from ingress.scp import commands
from ingress.scp.commands import MalformedCommand

SOP = "1.2.826.0.1.3680043.10.1139.7.1.1.1"


def encoded_by_pynetdicom(primitive: C_STORE | C_ECHO, message: type) -> bytes:
    msg = message()
    msg.primitive_to_message(primitive)
    encoded = encode_dataset(msg.command_set, True, True)
    assert encoded is not None
    return encoded


def test_a_c_store_request_as_a_peer_encodes_it() -> None:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = SOP
    request.Priority = 2
    request.DataSet = BytesIO(b"\x00" * 8)
    command = commands.decode(encoded_by_pynetdicom(request, C_STORE_RQ))
    assert command == commands.Command(commands.C_STORE_RQ, 7, True, CTImageStorage, SOP)


def test_a_c_echo_request_as_a_peer_encodes_it() -> None:
    request = C_ECHO()
    request.MessageID = 3
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    command = commands.decode(encoded_by_pynetdicom(request, C_ECHO_RQ))
    assert command == commands.Command(commands.C_ECHO_RQ, 3, False, "1.2.840.10008.1.1", "")


@pytest.mark.parametrize("comment", [None, "StudyInstanceUID is missing or empty", "odd"])
def test_a_c_store_response_reads_back_as_pynetdicom_reads_it(comment: str | None) -> None:
    request = commands.Command(commands.C_STORE_RQ, 65535, True, CTImageStorage, SOP)
    status = 0x0000 if comment is None else 0xC001
    response = decode_dataset(BytesIO(commands.response(request, status, comment)), True, True)
    message = C_STORE_RSP()
    message.command_set = response
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_STORE)
    assert primitive.MessageIDBeingRespondedTo == 65535
    assert primitive.AffectedSOPClassUID == CTImageStorage
    assert primitive.AffectedSOPInstanceUID == SOP
    assert primitive.Status == status
    assert response.CommandDataSetType == commands.NO_DATASET
    assert response.get("ErrorComment") == comment
    assert response.CommandGroupLength == len(commands.response(request, status, comment)) - 12


def test_a_c_echo_response_reads_back_as_pynetdicom_reads_it() -> None:
    request = commands.Command(commands.C_ECHO_RQ, 1, False, "1.2.840.10008.1.1", "")
    message = C_ECHO_RSP()
    message.command_set = decode_dataset(BytesIO(commands.response(request, 0)), True, True)
    primitive = message.message_to_primitive()
    assert isinstance(primitive, C_ECHO)
    assert primitive.MessageIDBeingRespondedTo == 1
    assert primitive.Status == 0
    assert "AffectedSOPInstanceUID" not in message.command_set


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x08\x00\x00\x01\x02\x00\x00\x00\x01\x00", "not part of a command set"),  # group 0008
        (b"\x00\x00\x00\x01\x08\x00\x00\x00\x01\x00", "not part of a command set"),  # overruns
        (b"\x00\x00\x00\x01", "after the last element"),
        (b"\x00\x00\x10\x01\x02\x00\x00\x00\x07\x00", "without a valid CommandField"),
    ],
)
def test_a_broken_command_set_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(MalformedCommand, match=why):
        commands.decode(data)
