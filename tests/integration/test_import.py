"""`pacsflow import` with real parts: files on disk, Tansu, PostgreSQL and a `pacsflow worker`.

A folder of 2,000 files (1,985 instances, 10 files that are no DICOM, 5 truncated instances) is
imported, stopped halfway (SIGINT; SIGKILL), imported again: every instance stored once, its events
on Kafka, the 15 others listed with their reasons. Zip files and DICOMDIRs; the bar on a terminal,
log lines elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ScpFactory, WorkerFactory, query
from tests.support import dicomdata
from tests.support.services import DCMTK, Broker, clean_environment, pacsflow, require, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]

GOOD, NOT_DICOM, TRUNCATED = 1985, 10, 5
STUDIES = 5
DCMMKDIR = DCMTK / "dcmmkdir"


@dataclass(frozen=True)
class Disk:
    folder: Path
    sops: frozenset[str]
    studies: frozenset[str]
    bad: Mapping[str, str]
    """Each file that is not stored (its path as listed) -> what its reason must contain."""


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    """2,000 files in nested folders: 1,985 instances (64x64) over 5 studies, 10 files that are no
    DICOM, 5 instances cut short."""
    folder = tmp_path_factory.mktemp("disk") / "disk"
    datasets = []
    per_study = GOOD // STUDIES
    for study in range(STUDIES):
        study_uid = dicomdata.uid(77, study)
        datasets += dicomdata.ct_series(study_uid, f"{study_uid}.1", per_study)
    sops = frozenset(str(ds.SOPInstanceUID) for ds in datasets)
    studies = frozenset(str(ds.StudyInstanceUID) for ds in datasets)
    for n, ds in enumerate(datasets):
        dicomdata.write(ds, folder / f"study{n // per_study}" / f"{n:05d}.dcm")
    bad = {}
    for n in range(NOT_DICOM):
        path = folder / "notes" / f"note{n}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"scanner notes {n}\n" * (n + 1))
        bad[str(path)] = "not a DICOM file"
    for n in range(TRUNCATED):
        whole = dicomdata.encode(dicomdata.ct_series(dicomdata.uid(78, n), dicomdata.uid(78, n, 1), 1)[0])
        path = folder / "cut" / f"cut{n}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(whole[: len(whole) - 1000 - n])
        bad[str(path)] = "truncated"
    assert sum(1 for p in folder.rglob("*") if p.is_file()) == GOOD + NOT_DICOM + TRUNCATED
    return Disk(folder, sops, studies, bad)


def env_for(data_dir: Path, bootstrap: str = "", node: str = "import-test") -> dict[str, str]:
    return {
        "PACSFLOW_DATA_DIR": str(data_dir),
        "PACSFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "PACSFLOW_KAFKA_REQUEST_TIMEOUT_S": "3",
        "PACSFLOW_NODE_ID": node,
        "PACSFLOW_LOG_FORMAT": "json",
    }


def start_import(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "import", *args],
            env={**clean_environment(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def journal_rows(data_dir: Path) -> int:
    path = data_dir / "outbox" / "imports" / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT count(*) FROM imported").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:  # created, its table not yet
        return 0


def stored_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "storage" / "default").rglob("*.dcm"))


def failures(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    assert lines[0] == "path\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


def log_events(text: str, name: str) -> list[dict[str, object]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def interrupt_halfway(disk: Disk, data_dir: Path, env: Mapping[str, str], signum: int, log: Path) -> int:
    """Start the import, send ``signum`` once the journal holds 1,000 files; its exit status."""
    process = start_import(
        [str(disk.folder), "--failures", str(data_dir / "first.tsv"), "--log-every", "0.2"], env, log
    )
    try:
        wait_for(
            lambda: journal_rows(data_dir) >= 1000 or process.poll() is not None,
            180,
            "the import to store 1,000 files",
            interval=0.02,
        )
        assert process.poll() is None, f"the import ended before it was stopped: {log.read_text()[-3000:]}"
        process.send_signal(signum)
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def check_second_run(disk: Disk, data_dir: Path, env: Mapping[str, str], first_stored: int) -> None:
    listed = data_dir / "failures.tsv"
    again = pacsflow("import", str(disk.folder), "--failures", str(listed), env=env, timeout=300)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(rf"already stored\s+{first_stored}\b", again.stdout), again.stdout[-3000:]
    assert re.search(rf"stored\s+{GOOD - first_stored}\n", again.stdout), again.stdout[-3000:]
    assert re.search(rf"not DICOM\s+{NOT_DICOM}\n", again.stdout), again.stdout[-3000:]
    assert "events: all published to Kafka" in again.stdout, again.stdout[-3000:]
    # Every instance stored exactly once; nothing left half-written.
    files = stored_files(data_dir)
    assert len(files) == GOOD
    assert {p.stem for p in files} == disk.sops
    assert not list((data_dir / "storage").rglob("*.tmp"))
    assert journal_rows(data_dir) == GOOD
    reasons = failures(listed)
    assert set(reasons) == set(disk.bad)
    for path, reason in reasons.items():
        assert disk.bad[path] in reason, (path, reason)


def storage_events(broker: Broker, node: str, expected: int) -> set[str]:
    records = broker.read("storage_queue", expected, timeout=60, where=lambda v: v.get("NodeID") == node)
    return {json.loads(r.value)["SopInstanceUID"] for r in records}


def test_sigint_stops_cleanly_and_a_second_run_goes_on(disk: Disk, broker: Broker, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = env_for(data_dir, broker.bootstrap, node="import-sigint")
    log = tmp_path / "first.log"
    status = interrupt_halfway(disk, data_dir, env, signal.SIGINT, log)
    first = log.read_text()
    assert status == 130, first[-3000:]
    assert "import stopped by SIGINT" in first
    # A clean stop: each file taken was finished, stored and entered.
    stored = journal_rows(data_dir)
    assert 1000 <= stored < GOOD
    assert len(stored_files(data_dir)) == stored
    assert re.search(rf"stored\s+{stored}\n", first)
    # Without a terminal: log lines say how far it is, no bar is drawn.
    lines = log_events(first, "import_progress")
    assert lines, first[-3000:]
    assert {"done", "total", "files_per_s", "mb_per_s", "eta_s", "failed"} <= set(lines[-1])
    assert lines[-1]["total"] == GOOD + NOT_DICOM + TRUNCATED
    assert "%|" not in first
    check_second_run(disk, data_dir, env, stored)
    assert storage_events(broker, "import-sigint", GOOD) == disk.sops


def test_sigkill_loses_nothing_and_the_index_gets_every_instance(
    disk: Disk, own_broker: Broker, database: str, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    env = env_for(data_dir, own_broker.bootstrap, node="import-sigkill")
    log = tmp_path / "first.log"
    status = interrupt_halfway(disk, data_dir, env, signal.SIGKILL, log)
    assert status == -signal.SIGKILL
    entered = journal_rows(data_dir)
    # Killed anywhere: a file may be stored and not yet entered (it is stored again), never the reverse.
    assert 1000 <= entered <= len(stored_files(data_dir)) < GOOD
    check_second_run(disk, data_dir, env, entered)
    # Each instance's events reached Kafka: one stored before the kill but not entered was stored
    # again, with its events, rather than skipped.
    assert storage_events(own_broker, "import-sigkill", GOOD) == disk.sops
    start_worker(own_broker.bootstrap, database, data_dir / "storage")
    wait_for(
        lambda: query(database, "SELECT count(*)::int AS n FROM dicom_instance_meta")[0]["n"] >= GOOD,
        120,
        f"{GOOD} instances indexed",
    )
    indexed = query(database, "SELECT sop_uid FROM dicom_instance_meta")
    assert {r["sop_uid"] for r in indexed} == disk.sops


def test_zip_files_and_dicomdirs(tmp_path: Path, broker: Broker) -> None:
    zipped = dicomdata.ct_series(dicomdata.uid(79, 1), dicomdata.uid(79, 1, 1), 6)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for n, ds in enumerate(zipped):
            out.writestr(f"IMAGES/IM{n:04d}", dicomdata.encode(ds))
        out.writestr("README.TXT", "burnt by the modality\n")
    media = tmp_path / "media"
    on_media = dicomdata.mr_series(dicomdata.uid(79, 2), dicomdata.uid(79, 2, 1), 4)
    for n, ds in enumerate(on_media):
        dicomdata.write(ds, media / "IMAGES" / f"IM{n:04d}")
    require(DCMMKDIR.exists(), "Debian's dcmtk (dcmmkdir)")
    made = subprocess.run(
        [str(DCMMKDIR), "+r", "+I", "+id", str(media), "+D", str(media / "DICOMDIR"), "IMAGES"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    # In the DICOMDIR's folder but not referenced by it: not imported.
    dicomdata.write(dicomdata.ct_series(dicomdata.uid(79, 3), dicomdata.uid(79, 3, 1), 1)[0], media / "STRAY")
    data_dir = tmp_path / "var"
    listed = tmp_path / "failures.tsv"
    done = pacsflow(
        "import", str(archive), str(media / "DICOMDIR"), "--failures", str(listed),
        env=env_for(data_dir, broker.bootstrap, node="import-media"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    files = stored_files(data_dir)
    assert {p.stem for p in files} == {str(ds.SOPInstanceUID) for ds in zipped + on_media}
    assert failures(listed) == {f"{archive}!README.TXT": "not a DICOM file"}
    # The file keeps its own File Meta Information: stored byte for byte as it was in the zip.
    first = next(p for p in files if p.stem == str(zipped[0].SOPInstanceUID))
    assert first.read_bytes() == dicomdata.encode(zipped[0])
    # Run again: all skipped, only the README still fails.
    again = pacsflow(
        "import", str(archive), str(media / "DICOMDIR"), "--failures", str(listed),
        env=env_for(data_dir, broker.bootstrap, node="import-media"),
    )  # fmt: skip
    assert again.returncode == 1
    assert re.search(r"already stored\s+10\b", again.stdout), again.stdout


def test_a_fifo_in_a_folder_is_listed_not_opened(tmp_path: Path, broker: Broker) -> None:
    folder = tmp_path / "disk"
    good = dicomdata.ct_series(dicomdata.uid(78, 1), dicomdata.uid(78, 1, 1), 2)
    for n, ds in enumerate(good):
        dicomdata.write(ds, folder / f"IM{n}")
    os.mkfifo(folder / "pipe")  # opening it for reading would wait for a writer forever
    listed = tmp_path / "failures.tsv"
    done = pacsflow(
        "import", str(folder), "--failures", str(listed),
        env=env_for(tmp_path / "var", broker.bootstrap, node="import-fifo"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert failures(listed) == {str(folder / "pipe"): "not a regular file"}
    assert {p.stem for p in stored_files(tmp_path / "var")} == {str(ds.SOPInstanceUID) for ds in good}


def test_the_bar_on_a_terminal_and_log_lines_elsewhere(disk: Disk, tmp_path: Path) -> None:
    some = sorted(p for p in disk.folder.rglob("*.dcm") if p.parent.name == "study0")[:300]
    args = [*map(str, some), "--jobs", "1", "--log-every", "0.05", "--failures", str(tmp_path / "f.tsv")]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**clean_environment(), **env_for(tmp_path / "tty")}
    del env["PACSFLOW_LOG_FORMAT"]  # auto: what a user gets
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "import", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        process.wait(60)
    shown = output.decode(errors="replace")
    assert process.returncode == 0, shown[-3000:]
    assert re.search(r"import: +\d+%\|", shown), shown[-3000:]
    assert re.search(r"300/300 \[[^\]]*files/s, [\d.]+ MB/s, 0 failed\]", shown), shown[-3000:]
    assert "import finished" in shown
    assert "import_progress" not in shown
    # The same without a terminal: progress as log lines, no bar.
    done = pacsflow("import", *args, env=env_for(tmp_path / "plain"))
    assert done.returncode == 0, done.stdout[-3000:]
    assert log_events(done.stdout, "import_progress"), done.stdout[-3000:]
    assert "%|" not in done.stdout + done.stderr


def test_broker_down_events_wait_in_the_slot_until_an_scp_adopts_them(
    tmp_path: Path, own_broker: Broker, start_scp: ScpFactory
) -> None:
    datasets = dicomdata.ct_series(dicomdata.uid(80, 1), dicomdata.uid(80, 1, 1), 8)
    dicomdata.write_all(datasets, tmp_path / "disk")
    data_dir = tmp_path / "var"
    own_broker.stop()  # nothing listens on its port now
    done = pacsflow(
        "import", str(tmp_path / "disk"), "--failures", str(tmp_path / "f.tsv"),
        env=env_for(data_dir, own_broker.bootstrap, node="import-outage"), timeout=180,
    )  # fmt: skip
    # Stored all the same: the events are durable in the import's outbox slot, and it says so.
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(stored_files(data_dir)) == len(datasets)
    slot = data_dir / "outbox" / "import-0.sqlite"
    assert f"the broker did not take {2 * len(datasets)}; they wait, durable, in {slot}" in done.stdout
    # A pacsflow scp on the same data folder adopts the slot no process holds and publishes it.
    own_broker.start()
    start_scp(own_broker.bootstrap, data_dir=str(data_dir), node_id="scp-adopts")
    assert storage_events(own_broker, "import-outage", len(datasets)) == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    wait_for(lambda: not slot.exists(), 30, "the adopted slot to be removed")
