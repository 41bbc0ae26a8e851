from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import StorageError
from pipeline.models import TenantId, Uid
from pipeline.stores.files import FolderSyncs, InstanceLocation, StorageLayout, fsync_dir, write_atomic


def location() -> InstanceLocation:
    return InstanceLocation(TenantId("t1"), Uid("1.2"), Uid("1.2.3"), Uid("1.2.3.4"))


def test_layout_is_the_seeds(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    assert layout.instance_path(location()) == tmp_path / "t1" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert layout.series_metadata_path(TenantId("t1"), Uid("1.2"), Uid("1.2.3")) == (
        tmp_path / "t1" / "metadata" / "1.2" / "1.2.3.json"
    )
    assert layout.study_metadata_path(TenantId("t1"), Uid("1.2")) == tmp_path / "t1" / "metadata" / "1.2.json"
    assert str(location().relative) == "t1/1.2/1.2.3/1.2.3.4.dcm"


def test_write_creates_folders_and_replaces_atomically(tmp_path: Path) -> None:
    path = StorageLayout(tmp_path).instance_path(location())
    assert write_atomic(path, [b"first", b" version"]) == 13
    assert path.read_bytes() == b"first version"
    write_atomic(path, [b"second"])
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.dcm"
    write_atomic(path, [b"old"])

    def chunks():  # type: ignore[no-untyped-def]
        yield b"new"
        raise OSError(5, "Input/output error")

    with pytest.raises(StorageError, match="cannot write"):
        write_atomic(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["x.dcm"]


def test_unwritable_folder_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError):
        write_atomic(blocker / "below" / "x.dcm", [b"data"])


class HeldFsyncs:
    """A folder fsync that does the real fsync, each call held until the test lets it go."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.fail_next: OSError | None = None

    def __call__(self, folder: Path) -> None:
        self.calls += 1
        self.entered.release()
        assert self.go.acquire(timeout=30), "the test never let the fsync go"
        error, self.fail_next = self.fail_next, None
        if error is not None:
            raise error
        fsync_dir(folder)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for a state the code promises to reach (a thread blocked on a lock), up to 30 s."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def start(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_renames_during_a_folder_fsync_share_the_next_one(tmp_path: Path) -> None:
    fsyncs = HeldFsyncs()
    syncs = FolderSyncs(fsyncs)
    first, first_errors = start(lambda: syncs.sync(tmp_path))
    assert fsyncs.entered.acquire(timeout=30)  # the first fsync runs: it may predate what follows
    later = [start(lambda: syncs.sync(tmp_path)) for _ in range(3)]
    wait_until(lambda: syncs.waiting(tmp_path) == 4, "the three later writers to wait")
    fsyncs.go.release()
    first.join(30)
    assert not first.is_alive() and not first_errors
    assert fsyncs.entered.acquire(timeout=30)  # one more fsync, begun after their renames
    assert all(thread.is_alive() for thread, _ in later), "none may return on the earlier fsync"
    fsyncs.go.release()
    for thread, errors in later:
        thread.join(30)
        assert not thread.is_alive() and not errors
    assert fsyncs.calls == 2
    assert syncs.waiting(tmp_path) == 0


def test_a_failed_folder_fsync_fails_every_writer_that_waited_for_it(tmp_path: Path) -> None:
    fsyncs = HeldFsyncs()
    syncs = FolderSyncs(fsyncs)
    first, first_errors = start(lambda: syncs.sync(tmp_path))
    assert fsyncs.entered.acquire(timeout=30)
    later = [start(lambda: syncs.sync(tmp_path)) for _ in range(2)]
    wait_until(lambda: syncs.waiting(tmp_path) == 3, "the later writers to wait")
    fsyncs.go.release()
    first.join(30)
    assert not first_errors
    assert fsyncs.entered.acquire(timeout=30)
    fsyncs.fail_next = OSError(5, "Input/output error")
    fsyncs.go.release()
    for thread, errors in later:
        thread.join(30)
        assert [type(e) for e in errors] == [OSError]
    fsyncs.go.release()
    syncs.sync(tmp_path)  # the next one runs again, and succeeds
    assert fsyncs.calls == 3


def test_folders_are_synced_apart(tmp_path: Path) -> None:
    fsyncs = HeldFsyncs()
    syncs = FolderSyncs(fsyncs)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    one, one_errors = start(lambda: syncs.sync(a))
    assert fsyncs.entered.acquire(timeout=30)
    other, other_errors = start(lambda: syncs.sync(b))
    assert fsyncs.entered.acquire(timeout=30), "another folder's fsync does not wait for this one"
    fsyncs.go.release()
    fsyncs.go.release()
    for thread in (one, other):
        thread.join(30)
    assert not one_errors and not other_errors and fsyncs.calls == 2
