"""The folder each process of a service writes its metrics in, made ready before prometheus_client
is imported (it reads ``PROMETHEUS_MULTIPROC_DIR`` once, at import).

Counters of a process that died stay: the service's totals must not fall while it runs, or
Prometheus takes the fall for a restart and counts every survivor's total again. They go when the
whole service starts afresh: a process that finds no other alive (none holds the folder's lock)
empties the folder. Gauges of dead processes (prometheus_client's ``live*`` modes) go at once.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import sys
from pathlib import Path

from pipeline.errors import PacsflowError
from pipeline.settings import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID = re.compile(r"_(\d+)\.db$")
_held: dict[str, int] = {}


def prepare(settings: Settings, service: str) -> Path:
    """Point prometheus_client at ``<metrics dir>/<service>``, emptied if no process of the service
    is alive; call before anything imports prometheus_client."""
    directory = settings.metrics_dir / service
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        raise PacsflowError(
            "prometheus_client was imported before the metrics folder was set: this process's metrics "
            "would be its own, not its service's (a bug: import pipeline.metrics.instruments later)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".alive", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise PacsflowError(
            f"cannot write metrics in {directory} ({exc.strerror}): check PACSFLOW_METRICS_DIR"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another process of the service is alive: its files stay
    else:
        for path in directory.glob("*.db"):
            path.unlink(missing_ok=True)
    # Held while the process lives: the next process to start sees it alive. A process that got the
    # exclusive lock emptied the folder before any other could write in it.
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held[service] = fd
    os.environ[ENV] = str(directory)
    _forget_the_dead(directory)
    atexit.register(_exiting, directory)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_the_dead(directory: Path) -> None:
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for path in directory.glob("*.db") if (m := _PID.search(path.name))}
    for pid in pids:
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def _exiting(directory: Path) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]
