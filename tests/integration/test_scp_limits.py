"""Association limits, PDU size and timeouts are configurable and enforced."""

from __future__ import annotations

import socket
import time

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_context

from tests.conftest import ScpFactory
from tests.support.services import Broker

pytestmark = pytest.mark.broker


def _associate(port: int) -> object:
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = [build_context(CTImageStorage, [ExplicitVRLittleEndian])]
    return ae.associate("127.0.0.1", port, ae_title="PACSFLOW")


def _established(port: int) -> object:
    """An association, once the readiness probe's own association has fully ended."""
    deadline = time.monotonic() + 5
    while True:
        assoc = _associate(port)
        if assoc.is_established or time.monotonic() > deadline:
            return assoc
        time.sleep(0.2)


def test_associations_beyond_the_maximum_are_rejected(start_scp: ScpFactory, broker: Broker) -> None:
    scp = start_scp(broker.bootstrap, scp_max_associations="2", scp_processes="1")
    first, second = _established(scp.port), _established(scp.port)
    try:
        assert first.is_established and second.is_established
        third = _associate(scp.port)
        assert third.is_rejected
        assert third.acceptor.primitive.diagnostic == 2  # local limit exceeded
    finally:
        first.release()
        second.release()
    again = _associate(scp.port)
    assert again.is_established
    again.release()


def test_the_maximum_pdu_is_the_configured_one(start_scp: ScpFactory, broker: Broker) -> None:
    scp = start_scp(broker.bootstrap, scp_max_pdu="65536")
    assoc = _associate(scp.port)
    try:
        assert assoc.acceptor.maximum_length == 65536
    finally:
        assoc.release()


def test_a_silent_connection_is_closed_after_the_timeout(start_scp: ScpFactory, broker: Broker) -> None:
    scp = start_scp(broker.bootstrap, scp_acse_timeout_s="1", scp_network_timeout_s="1")
    with socket.create_connection(("127.0.0.1", scp.port)) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        while sock.recv(1024):  # an A-ABORT, perhaps, then the close
            pass
        assert time.monotonic() - started < 8


def test_an_idle_association_is_aborted_after_the_network_timeout(
    start_scp: ScpFactory, broker: Broker
) -> None:
    scp = start_scp(broker.bootstrap, scp_network_timeout_s="1")
    assoc = _associate(scp.port)
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert assoc.is_aborted or not assoc.is_alive()
    assert not assoc.is_established
