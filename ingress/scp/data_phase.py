"""The data transfer phase of an accepted association, served on the association's own thread.

pynetdicom negotiates the association (``handover``): A-ASSOCIATE, the known-peers rule
(``admission``), the syntax rule (``negotiation``), TLS. From the A-ASSOCIATE-AC on, ``serve``
reads the socket itself: P-DATA-TF PDUs (PS3.8 9.3.5) whose PDVs carry a command set and its
dataset in fragments (PS3.8 E.2), answered by C-STORE-RSP or C-ECHO-RSP (PS3.7 9.3); A-RELEASE-RQ
answered by A-RELEASE-RP; A-ABORT taken as the end. Anything else, or a PDU that breaks the
rules, is answered by an A-ABORT (PS3.8 9.3.8), as pynetdicom does.

Why not pynetdicom's own data phase: per association it runs two threads that hand every PDU
through queues and poll each other with 1 ms sleeps, and it decodes and encodes every command set
through pydicom datasets. Profiled under dcmtk's storescu, that took about as much CPU per
instance as storing the instance (the file, its fsyncs, its events), plus up to a millisecond or
two of polling per instance: here one blocking read per PDU, one thread, and a command set is a
handful of ``struct`` calls (``commands``).

A store is answered only after ``Store`` returned its status, that is after the instance and its
events are durable or it was refused (``handlers``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pynetdicom import evt
from pynetdicom.association import Association

from ingress.scp import commands
from ingress.scp.commands import Command, MalformedCommand
from pipeline import log

_log = log.get(__name__)

Store = Callable[[Command, str, bytes], tuple[int, str | None]]
"""Stores one C-STORE request's dataset (in the given transfer syntax); returns the response's
Status and Error Comment. It never raises: a failure is a status."""

_P_DATA_TF = 0x04
_A_RELEASE_RQ = 0x05
_A_ABORT = 0x07
_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
_A_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_READ_BUFFER = 1 << 16  # several small PDUs per read

# A-ABORT source and reason (PS3.8 9.3.8)
_SERVICE_USER = 0x00
_SERVICE_PROVIDER = 0x02
_NOT_SPECIFIED = 0x00
_UNEXPECTED_PDU = 0x02
_INVALID_PARAMETER = 0x06


class _Ended(Exception):
    """The peer ended the association: an A-ABORT, or the connection closed."""


class _Violation(Exception):
    """The peer broke the protocol: answered by an A-ABORT with ``reason``."""

    def __init__(self, message: str, reason: int = _NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


def _abort_pdu(source: int, reason: int) -> bytes:
    return bytes((_A_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason))


def _read_pdu(reader: BinaryIO, limit: int) -> tuple[int, bytes]:
    header = reader.read(6)
    if len(header) < 6:
        raise _Ended("the connection was closed")
    kind, length = _PDU_HEADER.unpack(header)
    if kind == _P_DATA_TF and limit and length > limit:
        raise _Violation(f"a P-DATA-TF of {length} bytes, above the {limit} negotiated", _INVALID_PARAMETER)
    body = reader.read(length)
    if len(body) < length:
        raise _Ended("the connection was closed within a PDU")
    return kind, body


def _pdvs(body: bytes) -> Iterator[tuple[int, int, memoryview]]:
    """Each PDV item of a P-DATA-TF: (presentation context ID, message control header, fragment)."""
    view, position, end = memoryview(body), 0, len(body)
    if not end:
        raise _Violation("a P-DATA-TF without any PDV", _INVALID_PARAMETER)
    while position < end:
        if end - position < 6:
            raise _Violation("a P-DATA-TF ends within a PDV header", _INVALID_PARAMETER)
        length, context, control = _PDV_HEADER.unpack_from(body, position)
        if length < 2 or position + 4 + length > end:
            raise _Violation(f"a PDV of {length} bytes does not fit its P-DATA-TF", _INVALID_PARAMETER)
        yield context, control, view[position + 6 : position + 4 + length]
        position += 4 + length


@dataclass
class _Message:
    """A DIMSE message being received: its command's fragments, then its dataset's (PS3.7 E.2)."""

    context: int | None = None
    command_parts: list[memoryview] = field(default_factory=list)
    command: Command | None = None
    dataset_parts: list[memoryview] = field(default_factory=list)

    def add(self, context: int, control: int, fragment: memoryview) -> bool:
        """Add one PDV; whether the message is now complete."""
        if self.context is not None and context != self.context:
            raise _Violation(f"a PDV of presentation context {context} within a message of {self.context}")
        self.context = context
        if control & 0x01:  # a command fragment
            if self.command is not None:
                raise _Violation("a command fragment where its dataset was due")
            self.command_parts.append(fragment)
            if not control & 0x02:
                return False
            try:
                self.command = commands.decode(b"".join(self.command_parts))
            except MalformedCommand as exc:
                raise _Violation(str(exc), _INVALID_PARAMETER) from None
            return not self.command.has_dataset
        if self.command is None:
            raise _Violation("a dataset fragment before its command")
        self.dataset_parts.append(fragment)
        return bool(control & 0x02)


class _Connection:
    """The association's socket, its accepted presentation contexts and the peer's PDU limit."""

    def __init__(self, assoc: Association) -> None:
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is None:
            raise _Ended("the connection was closed before the association was established")
        self.socket: socket.socket = sock
        self.syntaxes = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        self.verification = {
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == "1.2.840.10008.1.1"
        }
        self.limit = int(assoc.acceptor.maximum_length or 0)
        self.peer_limit = int(assoc.requestor.maximum_length or 0)

    def send_command(self, context: int, encoded: bytes) -> None:
        """``encoded`` as PDVs of ``context``, each in its own P-DATA-TF within the peer's limit."""
        room = self.peer_limit - 6 if self.peer_limit > 6 else len(encoded) or 1
        pdus = []
        for start in range(0, len(encoded), room):
            fragment = encoded[start : start + room]
            last = start + room >= len(encoded)
            pdus.append(
                _PDU_HEADER.pack(_P_DATA_TF, 6 + len(fragment))
                + _PDV_HEADER.pack(2 + len(fragment), context, 0x03 if last else 0x01)
                + fragment
            )
        self.socket.sendall(b"".join(pdus))


def serve(assoc: Association, store: Store) -> None:
    """Serve the established ``assoc`` until it is released or aborted; then mark it so and
    trigger EVT_RELEASED or EVT_ABORTED, as pynetdicom's reactor would."""
    released = False
    try:
        connection = _Connection(assoc)
        connection.socket.settimeout(assoc.network_timeout)
        reader: BinaryIO
        with connection.socket.makefile("rb", buffering=_READ_BUFFER) as reader:  # type: ignore[assignment]
            try:
                _serve_messages(assoc, connection, reader, store)
                released = True
            except _Violation as exc:
                _log.warning("association_aborted", reason=str(exc), address=str(assoc.requestor.address))
                _send_quietly(connection.socket, _abort_pdu(_SERVICE_PROVIDER, exc.reason))
            except TimeoutError:
                _log.warning(
                    "association_timed_out",
                    seconds=assoc.network_timeout,
                    address=str(assoc.requestor.address),
                )
                _send_quietly(connection.socket, _abort_pdu(_SERVICE_USER, _NOT_SPECIFIED))
            except (_Ended, OSError):
                pass
            except Exception:  # a bug of ours: abort rather than leave the peer waiting for an answer
                _log.exception("association_failed", address=str(assoc.requestor.address))
                _send_quietly(connection.socket, _abort_pdu(_SERVICE_PROVIDER, _NOT_SPECIFIED))
    except (_Ended, OSError):
        pass
    assoc.is_established = False
    if released:
        assoc.is_released = True
        evt.trigger(assoc, evt.EVT_RELEASED, {})
    else:
        assoc.is_aborted = True
        evt.trigger(assoc, evt.EVT_ABORTED, {})


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the peer is gone already: nothing to tell it
        sock.sendall(data)


def _serve_messages(assoc: Association, connection: _Connection, reader: BinaryIO, store: Store) -> None:
    """Read and answer messages until the peer asks to release; raise ``_Ended``, ``_Violation``
    or ``TimeoutError`` otherwise."""
    message = _Message()
    while True:
        kind, body = _read_pdu(reader, connection.limit)
        if kind == _A_RELEASE_RQ:
            connection.socket.sendall(_A_RELEASE_RP)
            return
        if kind == _A_ABORT:
            raise _Ended("the peer aborted the association")
        if kind != _P_DATA_TF:
            raise _Violation(f"an unexpected PDU of type 0x{kind:02X}", _UNEXPECTED_PDU)
        for context, control, fragment in _pdvs(body):
            if context not in connection.syntaxes:
                raise _Violation(f"a PDV of presentation context {context}, which was not accepted")
            if message.add(context, control, fragment):
                _answer(connection, message, store)
                message = _Message()
        if assoc._kill:  # pynetdicom's own flag for "stop this association"
            raise _Ended("the association was stopped")


def _answer(connection: _Connection, message: _Message, store: Store) -> None:
    command, context = message.command, message.context
    assert command is not None and context is not None
    if command.field == commands.C_CANCEL_RQ:
        return  # nothing to cancel: every request is answered before the next is read
    verification = context in connection.verification
    if command.field == commands.C_ECHO_RQ and verification:
        status, comment = 0x0000, None
    elif command.field == commands.C_STORE_RQ and not verification:
        dataset = b"".join(message.dataset_parts)
        message.dataset_parts.clear()
        status, comment = store(command, connection.syntaxes[context], dataset)
    else:
        raise _Violation(
            f"a DIMSE command 0x{command.field:04X} on presentation context {context}, "
            "which pacsflow does not serve there (C-STORE and C-ECHO only)"
        )
    connection.send_command(context, commands.response(command, status, comment))
