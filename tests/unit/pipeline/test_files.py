from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import StorageError
from pipeline.models import TenantId, Uid
from pipeline.stores.files import InstanceLocation, StorageLayout, write_atomic


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
