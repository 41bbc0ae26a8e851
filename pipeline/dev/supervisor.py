"""A small process supervisor: start children in order, restart the ones that die, stop in reverse.

Each child runs in its own process group, so a Ctrl-C at the terminal reaches only the supervisor,
which then stops the children in reverse order; each child also gets a parent-death signal, so
killing the supervisor outright does not leave orphans. Our own services say they are ready with
the systemd notification protocol; external ones (broker, database) are probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline import lifecycle, listeners, log
from pipeline.errors import ChildFailed
from pipeline.lifecycle import NOTIFY_SOCKET

_log = log.get(__name__)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    probe: Callable[[], Awaitable[bool]] | None = None
    """Polled until it returns True; None: the child sends READY=1 to $NOTIFY_SOCKET."""
    before_start: Callable[[], Awaitable[object]] | None = None
    after_ready: Callable[[], Awaitable[object]] | None = None
    user: str | None = None
    listeners: Mapping[str, socket.socket] = field(default_factory=dict)
    """The listening sockets the child serves on, handed down, each in its variable
    (``pipeline.listeners``)."""
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15.0
    start_timeout_s: float = 90.0


@dataclass
class _Child:
    spec: ChildSpec
    notify: socket.socket
    notify_address: str
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    failures: int = 0

    def on_notify(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    self.ready.set()


def _notify_socket(name: str) -> tuple[socket.socket, str]:
    """A datagram socket in the abstract namespace: no path, so no length limit or leftovers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"pacsflow-dev-{os.getpid()}-{name}"
    sock.bind("\0" + address)
    sock.setblocking(False)
    return sock, "@" + address


def _die_with_parent(signum: int) -> Callable[[], None]:
    def set_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return set_signal


async def run_to_end(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Run a one-shot command to its end, dying with us; ChildFailed if it fails. Its output goes
    where ours does, whole.

    `pacsflow dev` runs its one-shots (migrate, topics, reconcile) this way rather than in its own
    process: what they import and allocate (database driver, Kafka admin client, pydicom) is freed
    when they end instead of being held by the supervisor for the whole run."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        # Neither our listeners nor our service manager's socket: a one-shot serves and tells nothing.
        env={k: v for k, v in listeners.child_env(env, {}).items() if k != NOTIFY_SOCKET},
        # Its own group, as every child's: Ctrl-C stops us, and we stop it, not the terminal.
        process_group=0,
        preexec_fn=_die_with_parent(signal.SIGTERM),
    )
    try:
        status = await process.wait()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if status != 0:
        raise ChildFailed(f"{' '.join(argv[-2:])} exited with status {status}: its output is above")


class Supervisor:
    def __init__(self, specs: Sequence[ChildSpec]) -> None:
        self._children = [_Child(spec, *_notify_socket(spec.name)) for spec in specs]

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None]) -> None:
        """Start every child, call ``on_ready``, keep them running until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        for child in self._children:
            loop.add_reader(child.notify.fileno(), child.on_notify)
        try:
            for child in self._children:
                if stop.is_set():
                    return
                await self._start(child, stop)
            on_ready()
            await self._watch(stop)
        finally:
            await self._stop_all()
            for child in self._children:
                loop.remove_reader(child.notify.fileno())
                child.notify.close()

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**listeners.child_env(spec.env, spec.listeners), NOTIFY_SOCKET: child.notify_address}
        child.ready.clear()
        child.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            env=env,
            # The group too: with root's group, folders' group bits would decide access.
            user=spec.user,
            group=spec.user,
            extra_groups=[] if spec.user else None,
            process_group=0,
            pass_fds=tuple(sock.fileno() for sock in spec.listeners.values()),
            preexec_fn=_die_with_parent(spec.stop_signal),
        )
        child.started_at = time.monotonic()
        _log.info("child_started", child=spec.name, pid=child.process.pid)

    async def _start(self, child: _Child, stop: asyncio.Event) -> None:
        spec = child.spec
        if spec.before_start is not None:
            await spec.before_start()
        await self._spawn(child)
        assert child.process is not None
        deadline = time.monotonic() + spec.start_timeout_s
        while not await self._is_ready(child):
            if child.process.returncode is not None:
                raise ChildFailed(
                    f"{spec.name} exited with status {child.process.returncode} while starting; "
                    "its output above says why"
                )
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise ChildFailed(f"{spec.name} did not answer within {spec.start_timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        if spec.after_ready is not None:
            await spec.after_ready()
        _log.info(
            "child_ready",
            child=spec.name,
            pid=child.process.pid,
            s=round(time.monotonic() - child.started_at, 2),
        )

    async def _is_ready(self, child: _Child) -> bool:
        if child.spec.probe is None:
            return child.ready.is_set()
        assert child.process is not None
        return child.process.returncode is None and await child.spec.probe()

    async def _watch(self, stop: asyncio.Event) -> None:
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                exits = {
                    asyncio.create_task(c.process.wait()): c for c in self._children if c.process is not None
                }
                done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
                for task in exits:
                    if task not in done:
                        task.cancel()
                for task in done:
                    if task in exits and not stop.is_set():
                        await self._restart(exits[task], stop)
        finally:
            stopping.cancel()

    async def _restart(self, child: _Child, stop: asyncio.Event) -> None:
        assert child.process is not None
        ran_s = time.monotonic() - child.started_at
        child.failures = 1 if ran_s > 60 else child.failures + 1
        delay = min(30.0, 0.5 * 2 ** (child.failures - 1))
        _log.warning(
            "child_exited",
            child=child.spec.name,
            status=child.process.returncode,
            ran_s=round(ran_s, 1),
            restart_in_s=delay,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        if stop.is_set():
            return
        try:
            await self._start(child, stop)
            _log.info("child_restarted", child=child.spec.name, pid=child.process.pid)
        except ChildFailed as exc:
            _log.error("child_restart_failed", child=child.spec.name, error=str(exc))
            await self._stop_child(child)

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            await self._stop_child(child)

    async def _stop_child(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        _log.info("child_stopping", child=child.spec.name, pid=process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, child.spec.stop_signal)
        try:
            await asyncio.wait_for(process.wait(), timeout=child.spec.stop_timeout_s)
        except TimeoutError:
            _log.warning("child_killed", child=child.spec.name, after_s=child.spec.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        _log.info("child_stopped", child=child.spec.name, status=process.returncode)


async def run_replicas(
    command: str,
    count: int,
    env: Mapping[str, str],
    count_variable: str,
    handed: Mapping[str, socket.socket],
) -> None:
    """Run ``count`` copies of ``pacsflow <command>`` (each told to be one, by ``count_variable``),
    all accepting on the ``handed`` listeners, ready when all are, restarting any that dies: how
    one service uses more than one core."""
    stop = lifecycle.stop_on_signals()
    child_env = {**env, count_variable: "1"}
    specs = [
        ChildSpec(f"{command}-{n}", [sys.executable, "-m", "pipeline", command], child_env, listeners=handed)
        for n in range(count)
    ]
    await Supervisor(specs).run(stop, lifecycle.notify_ready)
