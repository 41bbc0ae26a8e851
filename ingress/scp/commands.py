"""DIMSE command sets (PS3.7 9.3 and E.1): a request decoded, a response encoded.

A command set is group 0000 encoded in Implicit VR Little Endian, whatever the negotiated transfer
syntax. Only what the SCP answers is read: C-STORE-RQ and C-ECHO-RQ (PS3.7 9.3.1, 9.3.5). UIDs are
kept as the sender encoded them, less their padding, and echoed back in the response unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_DATASET_TYPE = 0x00000800
_AFFECTED_SOP_INSTANCE = 0x00001000

_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")


class MalformedCommand(Exception):
    """A command set that cannot be decoded: the association is aborted (PS3.8 9.3.8)."""


@dataclass(frozen=True)
class Command:
    """A request's command set: what the SCP needs to act on it and to answer it."""

    field: int
    message_id: int
    has_dataset: bool
    sop_class: str
    """(0000,0002) Affected SOP Class UID, empty when absent."""
    sop_instance: str
    """(0000,1000) Affected SOP Instance UID, empty when absent."""


def _uid(value: bytes | None) -> str:
    return "" if value is None else value.decode("latin-1").rstrip("\x00 ")


def decode(data: bytes) -> Command:
    """The command set ``data`` (all its fragments, joined); raise ``MalformedCommand``."""
    elements: dict[int, bytes] = {}
    position, end = 0, len(data)
    while position < end:
        if end - position < 8:
            raise MalformedCommand(f"{end - position} bytes after the last element of the command set")
        group, element, length = _HEADER.unpack_from(data, position)
        position += 8
        if group != 0x0000 or position + length > end:
            raise MalformedCommand(f"element ({group:04X},{element:04X}) is not part of a command set")
        elements[element] = data[position : position + length]
        position += length
    field = _unsigned(elements, _COMMAND_FIELD, "CommandField")
    has_dataset = _unsigned(elements, _DATASET_TYPE, "CommandDataSetType") != NO_DATASET
    message_id = _unsigned(elements, _MESSAGE_ID, "MessageID") if field != C_CANCEL_RQ else 0
    return Command(
        field,
        message_id,
        has_dataset,
        _uid(elements.get(_AFFECTED_SOP_CLASS)),
        _uid(elements.get(_AFFECTED_SOP_INSTANCE)),
    )


def _unsigned(elements: dict[int, bytes], tag: int, name: str) -> int:
    value = elements.get(tag, b"")
    if len(value) != 2:
        raise MalformedCommand(f"command set without a valid {name} (0000,{tag:04X})")
    number: int = _US.unpack(value)[0]
    return number


def _element(tag: int, value: bytes) -> bytes:
    return _HEADER.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("latin-1")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value.encode("latin-1", "replace")
    return raw + b" " if len(raw) % 2 else raw


def response(request: Command, status: int, comment: str | None = None) -> bytes:
    """The encoded response to ``request``: C-STORE-RSP or C-ECHO-RSP (PS3.7 9.3.1.2, 9.3.5.2),
    elements in ascending tag order as PS3.5 7.1 requires, ``comment`` as (0000,0902) Error
    Comment (an LO: the caller keeps it within 64 characters)."""
    elements = [_element(_AFFECTED_SOP_CLASS, _ui(request.sop_class))]
    elements.append(_element(_COMMAND_FIELD, _US.pack(request.field | 0x8000)))
    elements.append(_element(0x00000120, _US.pack(request.message_id)))
    elements.append(_element(_DATASET_TYPE, _US.pack(NO_DATASET)))
    elements.append(_element(0x00000900, _US.pack(status)))
    if comment:
        elements.append(_element(0x00000902, _lo(comment)))
    if request.field == C_STORE_RQ:
        elements.append(_element(_AFFECTED_SOP_INSTANCE, _ui(request.sop_instance)))
    body = b"".join(elements)
    return _element(0x00000000, struct.pack("<L", len(body))) + body
