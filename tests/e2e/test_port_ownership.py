"""A second install on the ports of a running one is refused at once; the first keeps every
connection (issue 14: two `pacsflow dev` from different data folders used to split them)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dicomdata
from tests.support.dev import Dev, start_dev
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import clean_environment, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.dcmtk]

# Not a measure of speed: a refused start exits within a few seconds, one let in runs until killed.
EXITS_WITHIN_S = 60


@pytest.fixture
def first(tmp_path: Path) -> Iterator[Dev]:
    require_dcmtk()
    running = start_dev(
        tmp_path / "first", tmp_path / "first.log", free_port(), free_port(), {"PACSFLOW_HTTP_PROCESSES": "2"}
    )
    yield running
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()


def second_install(command: str, data_dir: Path, log: Path, settings: dict[str, str]) -> tuple[int, str]:
    """Run `pacsflow <command>` of another install (its own data folder) to its end: status, output."""
    env = {
        **clean_environment(),
        "PACSFLOW_DATA_DIR": str(data_dir),
        "PACSFLOW_LOG_FORMAT": "json",
        **settings,
    }
    env.pop("NOTIFY_SOCKET", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        status = process.wait(EXITS_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"`pacsflow {command}` of a second install still runs on ports in use: {log.read_text()[-3000:]}"
        ) from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its children die with it (parent-death signal)
            process.wait()
    return status, log.read_text(errors="replace")


def assert_refused(status: int, output: str, port: int, variable: str) -> None:
    assert status != 0, output[-3000:]
    assert f"port {port} is already in use by another server" in output, output[-3000:]
    assert variable in output, output[-3000:]


def get(url: str, accept: str = "application/dicom+json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def test_a_second_install_is_refused_and_the_first_keeps_every_connection(first: Dev, tmp_path: Path) -> None:
    other = tmp_path / "second"
    scp, http = first.scp_port, first.http_port
    dsn = re.search(r"PostgreSQL\s+(postgresql://\S+)", first.text()).group(1)  # type: ignore[union-attr]

    status, output = second_install(
        "dev",
        other,
        tmp_path / "second-dev.log",
        {"PACSFLOW_SCP_PORT": str(scp), "PACSFLOW_HTTP_PORT": str(http)},
    )
    assert_refused(status, output, scp, "PACSFLOW_SCP_PORT")
    # Refused before anything started: no broker, no database initialised in the other folder.
    assert "child_started" not in output
    assert not (other / "postgres").exists()

    # Only the HTTP port taken: named, and the SCP port it had bound is free again.
    free_scp = free_port()
    status, output = second_install(
        "dev",
        other,
        tmp_path / "second-dev-http.log",
        {"PACSFLOW_SCP_PORT": str(free_scp), "PACSFLOW_HTTP_PORT": str(http)},
    )
    assert_refused(status, output, http, "PACSFLOW_HTTP_PORT")

    services = (
        ("scp", "SCP", scp, {"PACSFLOW_KAFKA_BOOTSTRAP": first.bootstrap()}),
        ("web", "HTTP", http, {"PACSFLOW_DATABASE_URL": dsn}),
    )
    for command, kind, port, needs in services:
        for processes in ("1", "2"):  # one process, or several sharing the socket their parent binds
            status, output = second_install(
                command,
                other,
                tmp_path / f"second-{command}-{processes}.log",
                {f"PACSFLOW_{kind}_PORT": str(port), f"PACSFLOW_{kind}_PROCESSES": processes, **needs},
            )
            assert_refused(status, output, port, f"PACSFLOW_{kind}_PORT")

    everything_lands_in(first, tmp_path / "send")
    assert not list(other.rglob("*.dcm"))


def test_our_own_processes_keep_serving_the_ports_across_restarts(first: Dev, tmp_path: Path) -> None:
    # A process that stops closes only its own descriptor of the shared socket: the other SCP and
    # web processes, and the restarted ones, keep the ports served.
    pids = first.child_pids(service=None)
    os.kill(pids["dev/scp-0"], signal.SIGTERM)
    wait_for(lambda: first.events("child_restarted"), 30, "the SCP process to be restarted")
    os.kill(pids["dev/web-0"], signal.SIGTERM)
    wait_for(lambda: len(first.events("child_restarted")) == 2, 30, "the web process to be restarted")
    everything_lands_in(first, tmp_path / "send")


def everything_lands_in(dev: Dev, folder: Path) -> None:
    """Several associations and requests, each a new connection: all stored and answered by ``dev``."""
    run = uuid.uuid4().int % 10**12
    study, series = uid(run, 1), uid(run, 1, 1)
    sent = dicomdata.ct_series(study, series, 8)
    for ds in sent:
        path = dicomdata.write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
        result = storescu(dev.scp_port, [path])
        assert result.returncode == 0, result.stderr
    sops = {ds.SOPInstanceUID for ds in sent}
    assert {p.stem for p in (dev.data_dir / "storage").rglob("*.dcm")} == sops

    base = f"http://127.0.0.1:{dev.http_port}/dicomweb/studies/{study}/series/{series}"

    def listed() -> set[str]:
        status, body = get(f"{base}/instances")
        return {i["00080018"]["Value"][0] for i in json.loads(body)} if status == 200 else set()

    wait_for(lambda: listed() == sops, 30, "QIDO-RS to list every instance sent")
    for _ in range(3):
        for sop in sops:
            status, _ = get(
                f"{base}/instances/{sop}/frames/1",
                'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            )
            assert status == 200
