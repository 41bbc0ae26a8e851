"""A listening socket is bound once, refused when taken, and only taken over when it is one."""

from __future__ import annotations

import os
import socket

import pytest

from pipeline import listeners
from pipeline.errors import PacsflowError
from tests.support.services import free_port


def endpoint(port: int) -> listeners.Endpoint:
    return listeners.Endpoint("127.0.0.1", port, "PACSFLOW_SCP_HOST", "PACSFLOW_SCP_PORT")


def test_a_port_is_bound_once() -> None:
    port = free_port()
    with listeners.bind(endpoint(port)) as first:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with pytest.raises(PacsflowError) as refused:
            listeners.bind(endpoint(port))
    assert str(refused.value) == (
        f"port {port} is already in use by another server: stop that server (or wait for a "
        "pacsflow of a previous run to finish stopping), or choose another port with PACSFLOW_SCP_PORT"
    )


def test_a_handed_down_socket_is_taken_over() -> None:
    with listeners.bind(endpoint(free_port())) as bound:
        env = listeners.child_env({"PACSFLOW_SCP_PORT": "x"}, bound)
        assert env == {"PACSFLOW_SCP_PORT": "x", listeners.INHERITED_FD: str(bound.fileno())}
        duplicate = os.dup(bound.fileno())  # as a child sees it after exec
        with listeners.listen(
            {listeners.INHERITED_FD: str(duplicate)}, endpoint(bound.getsockname()[1])
        ) as taken:
            assert taken.fileno() == duplicate
            assert not taken.get_inheritable()
    assert listeners.INHERITED_FD not in listeners.child_env(env, None)


@pytest.mark.parametrize("value", ["three", "999999"])
def test_a_descriptor_that_is_no_socket_is_refused(value: str) -> None:
    with pytest.raises(PacsflowError, match=f"{listeners.INHERITED_FD}='{value}' is not an open socket"):
        listeners.listen({listeners.INHERITED_FD: value}, endpoint(free_port()))


def test_a_socket_that_does_not_listen_on_the_port_is_refused_and_left_open() -> None:
    with listeners.bind(endpoint(free_port())) as other, socket.socket() as idle:
        for sock in (other, idle):
            with pytest.raises(PacsflowError, match="is not a socket listening on port 1234"):
                listeners.listen({listeners.INHERITED_FD: str(sock.fileno())}, endpoint(1234))
            os.fstat(sock.fileno())  # not closed behind its owner's back
