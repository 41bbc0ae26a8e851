"""The listening sockets of pacsflow's servers: bound once per install, handed down to its processes.

A port is bound without ``SO_REUSEPORT``, so the kernel itself refuses it to anyone else
(``EADDRINUSE``): a second install started on the ports of a running one fails at once instead of
silently taking part of the connections. pacsflow's own processes share a port by inheriting the
one socket: `pacsflow dev` binds the DICOM (plain and TLS) and HTTP ports before it starts
anything and hands each to the children that serve it; `pacsflow scp` with several processes hands
its sockets to each. Each socket is handed down in a variable of its own (``INHERITED_FD``,
``INHERITED_TLS_FD``) naming its descriptor.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from pipeline.errors import PacsflowError
from pipeline.settings import Settings

INHERITED_FD = "LISTENER_FD"
"""The environment variable naming the descriptor of a listening socket handed down by the parent
(not ``PACSFLOW_*``: those are settings, and settings reject names they do not know): the plain
DICOM port of the SCP, the HTTP port of web."""
INHERITED_TLS_FD = "LISTENER_TLS_FD"
"""The same for the SCP's DICOM over TLS port."""
INHERITED_METRICS_FD = "LISTENER_METRICS_FD"
"""The same for the SCP's metrics port: whichever of its processes a scrape reaches answers for all."""
_INHERITED = (INHERITED_FD, INHERITED_TLS_FD, INHERITED_METRICS_FD)

BACKLOG = 128  # a burst of modalities or browsers connecting at once is not refused


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens, and the settings that choose it (named in errors)."""

    host: str
    port: int
    host_setting: str
    port_setting: str


def dicom(settings: Settings) -> Endpoint:
    return Endpoint(settings.scp_host, settings.scp_port, "PACSFLOW_SCP_HOST", "PACSFLOW_SCP_PORT")


def dicom_tls(settings: Settings) -> Endpoint:
    return Endpoint(settings.scp_host, settings.scp_tls_port, "PACSFLOW_SCP_HOST", "PACSFLOW_SCP_TLS_PORT")


def scp_metrics(settings: Settings) -> Endpoint:
    return Endpoint(
        settings.scp_host, settings.scp_metrics_port, "PACSFLOW_SCP_HOST", "PACSFLOW_SCP_METRICS_PORT"
    )


def worker_metrics(settings: Settings) -> Endpoint:
    return Endpoint(
        settings.http_host, settings.worker_metrics_port, "PACSFLOW_HTTP_HOST", "PACSFLOW_WORKER_METRICS_PORT"
    )


def scp(settings: Settings) -> dict[str, Endpoint]:
    """The SCP's endpoints, each by the variable that hands it down: the plain DICOM port unless
    ``PACSFLOW_SCP_PLAIN=off``, the TLS port when a certificate is set, the metrics port unless 0."""
    endpoints = {}
    if settings.scp_plain:
        endpoints[INHERITED_FD] = dicom(settings)
    if settings.scp_tls_cert:
        endpoints[INHERITED_TLS_FD] = dicom_tls(settings)
    if settings.scp_metrics_port:
        endpoints[INHERITED_METRICS_FD] = scp_metrics(settings)
    return endpoints


def http(settings: Settings) -> Endpoint:
    return Endpoint(settings.http_host, settings.http_port, "PACSFLOW_HTTP_HOST", "PACSFLOW_HTTP_PORT")


def bind(endpoint: Endpoint) -> socket.socket:
    """A new listening socket, non-blocking; refused if any other socket listens on the port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            endpoint.host or None, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise PacsflowError(
            f"cannot listen on {endpoint.host}:{endpoint.port} ({exc.strerror}): "
            f"check {endpoint.host_setting}"
        ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restart bind while old connections are in TIME_WAIT; on Linux it never lets a
        # second socket listen on the port (SO_REUSEPORT would, and is not set).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PacsflowError(
                f"port {endpoint.port} is already in use by another server: stop that server (or wait "
                f"for a pacsflow of a previous run to finish stopping), or choose another port with "
                f"{endpoint.port_setting}"
            ) from exc
        raise PacsflowError(
            f"cannot listen on {endpoint.host}:{endpoint.port} ({exc.strerror}): check "
            f"{endpoint.host_setting} and {endpoint.port_setting}"
        ) from exc
    # Non-blocking: when several processes accept on it, the ones that lose a connection to another
    # go back to waiting instead of blocking in accept (and in their stop).
    sock.setblocking(False)
    return sock


def listen(env: Mapping[str, str], endpoint: Endpoint, variable: str = INHERITED_FD) -> socket.socket:
    """The socket the parent handed down for ``endpoint`` in ``variable`` (see ``child_env``),
    else a new one."""
    value = env.get(variable)
    if not value:
        return bind(endpoint)
    try:
        sock = socket.socket(fileno=int(value))
    except (ValueError, OSError) as exc:
        raise PacsflowError(
            f"{variable}={value!r} is not an open socket: unset it (pacsflow sets it for its own processes)"
        ) from exc
    listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if not listening or sock.getsockname()[1] != endpoint.port:
        sock.detach()  # not ours to close
        raise PacsflowError(
            f"{variable}={value} is not a socket listening on port {endpoint.port}: unset it "
            "(pacsflow sets it for its own processes)"
        )
    sock.set_inheritable(False)  # only handed on on purpose (child_env), never leaked to helpers
    sock.setblocking(False)
    return sock


def listen_all(env: Mapping[str, str], endpoints: Mapping[str, Endpoint]) -> dict[str, socket.socket]:
    """``listen`` for each endpoint, by its variable; all or none (those taken are closed)."""
    with ExitStack() as opened:
        sockets = {
            variable: opened.enter_context(listen(env, endpoint, variable))
            for variable, endpoint in endpoints.items()
        }
        opened.pop_all()
        return sockets


def child_env(env: Mapping[str, str], handed: Mapping[str, socket.socket]) -> dict[str, str]:
    """The environment of a child started with ``pass_fds`` of the ``handed`` sockets, each named
    by its variable; none of the variables of a socket not handed, which it must not believe it
    inherited."""
    child = {k: v for k, v in env.items() if k not in _INHERITED}
    for variable, sock in handed.items():
        if variable not in _INHERITED:
            raise ValueError(f"{variable} is not a variable that hands down a listener")
        child[variable] = str(sock.fileno())
    return child
