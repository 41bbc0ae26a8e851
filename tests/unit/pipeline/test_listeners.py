"""A listening socket is bound once, refused when taken, and only taken over when it is one."""

from __future__ import annotations

import os
import socket

import pytest

from pipeline import listeners
from pipeline.errors import PacsflowError
from pipeline.settings import Settings, load
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
        env = listeners.child_env({"PACSFLOW_SCP_PORT": "x"}, {listeners.INHERITED_FD: bound})
        assert env == {"PACSFLOW_SCP_PORT": "x", listeners.INHERITED_FD: str(bound.fileno())}
        duplicate = os.dup(bound.fileno())  # as a child sees it after exec
        with listeners.listen(
            {listeners.INHERITED_FD: str(duplicate)}, endpoint(bound.getsockname()[1])
        ) as taken:
            assert taken.fileno() == duplicate
            assert not taken.get_inheritable()
    assert listeners.INHERITED_FD not in listeners.child_env(env, {})


def test_each_socket_is_handed_down_in_its_own_variable() -> None:
    plain_port, tls_port = free_port(), free_port()
    with listeners.bind(endpoint(plain_port)) as plain, listeners.bind(endpoint(tls_port)) as tls:
        handed = {listeners.INHERITED_FD: plain, listeners.INHERITED_TLS_FD: tls}
        env = listeners.child_env({listeners.INHERITED_TLS_FD: "7"}, handed)
        assert env == {
            listeners.INHERITED_FD: str(plain.fileno()),
            listeners.INHERITED_TLS_FD: str(tls.fileno()),
        }
        duplicate = os.dup(tls.fileno())
        child = {listeners.INHERITED_FD: "not looked at", listeners.INHERITED_TLS_FD: str(duplicate)}
        with listeners.listen(child, endpoint(tls_port), listeners.INHERITED_TLS_FD) as taken:
            assert taken.fileno() == duplicate
    # A child handed only the plain port must not believe it inherited a TLS one.
    assert listeners.INHERITED_TLS_FD not in listeners.child_env(env, {listeners.INHERITED_FD: plain})
    with pytest.raises(ValueError, match="PACSFLOW_SCP_PORT is not a variable that hands down a listener"):
        listeners.child_env({}, {"PACSFLOW_SCP_PORT": plain})


def scp_settings(**env: str) -> Settings:
    return load(
        {
            "PACSFLOW_SCP_PORT": "11112",
            "PACSFLOW_SCP_TLS_PORT": "2762",
            "PACSFLOW_SCP_METRICS_PORT": "0",
            **env,
        }
    )


@pytest.mark.parametrize(
    ("env", "ports"),
    [
        ({}, {listeners.INHERITED_FD: 11112}),
        (
            {"PACSFLOW_SCP_METRICS_PORT": "9101"},
            {listeners.INHERITED_FD: 11112, listeners.INHERITED_METRICS_FD: 9101},
        ),
        (
            {"PACSFLOW_SCP_TLS_CERT": "c.pem", "PACSFLOW_SCP_TLS_KEY": "k.pem"},
            {listeners.INHERITED_FD: 11112, listeners.INHERITED_TLS_FD: 2762},
        ),
        (
            {"PACSFLOW_SCP_TLS_CERT": "c.pem", "PACSFLOW_SCP_TLS_KEY": "k.pem", "PACSFLOW_SCP_PLAIN": "off"},
            {listeners.INHERITED_TLS_FD: 2762},
        ),
    ],
)
def test_the_scp_listens_plain_unless_off_with_tls_when_a_certificate_is_set_and_metrics_unless_0(
    env: dict[str, str], ports: dict[str, int]
) -> None:
    endpoints = listeners.scp(scp_settings(**env))
    assert {variable: e.port for variable, e in endpoints.items()} == ports
    if listeners.INHERITED_TLS_FD in endpoints:
        assert endpoints[listeners.INHERITED_TLS_FD].port_setting == "PACSFLOW_SCP_TLS_PORT"


def test_listening_on_all_ports_is_all_or_nothing() -> None:
    free, taken = free_port(), free_port()
    with listeners.bind(endpoint(taken)):
        endpoints = {listeners.INHERITED_FD: endpoint(free), listeners.INHERITED_TLS_FD: endpoint(taken)}
        with pytest.raises(PacsflowError, match=f"port {taken} is already in use"):
            listeners.listen_all({}, endpoints)
    with listeners.bind(endpoint(free)):  # the first port was let go again
        pass


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
