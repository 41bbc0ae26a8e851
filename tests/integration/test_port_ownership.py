"""A port is one install's: a foreign listener, even one that allows sharing (``SO_REUSEPORT``),
neither lets pacsflow in nor gets in beside it."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Scp
from tests.support.dimse import c_echo
from tests.support.services import Broker, Service, free_port, pacsflow, wait_for

pytestmark = [pytest.mark.broker]


def sharing_socket(port: int) -> socket.socket:
    """A listener as an unrelated server that allows sharing its port would open it."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


@pytest.fixture
def foreign() -> Iterator[socket.socket]:
    with sharing_socket(free_port()) as sock:
        yield sock


@pytest.mark.parametrize("processes", ["1", "2"])
def test_scp_is_refused_a_port_another_server_listens_on(
    foreign: socket.socket, broker: Broker, tmp_path: Path, processes: str
) -> None:
    port = foreign.getsockname()[1]
    result = pacsflow(
        "scp",
        env={
            "PACSFLOW_DATA_DIR": str(tmp_path),
            "PACSFLOW_SCP_HOST": "127.0.0.1",
            "PACSFLOW_SCP_PORT": str(port),
            "PACSFLOW_SCP_PROCESSES": processes,
            "PACSFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        },
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"port {port} is already in use by another server" in result.stderr
    assert "PACSFLOW_SCP_PORT" in result.stderr


def test_web_is_refused_a_port_another_server_listens_on(
    foreign: socket.socket, database: str, tmp_path: Path
) -> None:
    port = foreign.getsockname()[1]
    result = pacsflow(
        "web",
        env={
            "PACSFLOW_DATA_DIR": str(tmp_path),
            "PACSFLOW_HTTP_PORT": str(port),
            "PACSFLOW_DATABASE_URL": database,
        },
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"port {port} is already in use by another server" in result.stderr
    assert "PACSFLOW_HTTP_PORT" in result.stderr


def test_no_other_server_joins_the_port_of_the_scp_processes(scp: Scp) -> None:
    # scp runs PACSFLOW_SCP_PROCESSES (2 by default) on the one port, and still refuses a stranger.
    with pytest.raises(OSError) as refused:
        sharing_socket(scp.port)
    assert refused.value.errno == errno.EADDRINUSE
    assert c_echo(scp.port)


def test_no_other_server_joins_the_port_of_web(database: str, tmp_path: Path) -> None:
    port = free_port()
    web = Service(
        "web",
        {
            "PACSFLOW_DATA_DIR": str(tmp_path),
            "PACSFLOW_HTTP_PORT": str(port),
            "PACSFLOW_DATABASE_URL": database,
        },
        tmp_path / "web.log",
    ).start()
    try:
        wait_for(lambda: web.events("web_listening") or not web.alive(), 30, "pacsflow web to listen")
        assert web.alive(), web.log_path.read_text()[-3000:]
        with pytest.raises(OSError) as refused:
            sharing_socket(port)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        web.stop()
