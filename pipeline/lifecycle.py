"""How a pacsflow service process starts, says it is ready, and stops.

Readiness uses the systemd notification protocol (``READY=1`` sent to ``$NOTIFY_SOCKET``), so the
same services report readiness to `pacsflow dev` and to systemd units with ``Type=notify``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import uvloop

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify_ready() -> None:
    """Tell whoever started us (systemd, `pacsflow dev`) that we answer now; no-op otherwise."""
    address = os.environ.get(NOTIFY_SOCKET)
    if not address:
        return
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for a service's main coroutine to wait on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def exit_if_stuck(grace_s: float, what: str) -> threading.Timer:
    """End the process with status 1 unless it has ended by itself within ``grace_s``.

    For a stop that a library can deadlock (mode's worker, seen waiting forever after the broker
    went away during the stop): a process that never ends holds its database connections, so
    PostgreSQL cannot stop either, and a supervisor's children outlive it. The timer's thread is a
    daemon: a process that ends in time is not held by it."""

    def give_up() -> None:
        print(f"pacsflow: {what} did not stop within {grace_s:g} s; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(grace_s, give_up)
    timer.daemon = True
    timer.start()
    return timer


def run(main: Coroutine[Any, Any, None], *, fast: bool = True) -> None:
    """Run a service's main coroutine; ``fast`` uses uvloop (which cannot spawn as another user)."""
    if fast:
        uvloop.run(main)
    else:
        asyncio.run(main)
