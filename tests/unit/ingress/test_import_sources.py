"""What `pacsflow import` finds in the paths it is given, and how it reads zip members: real files,
real zips, a real DICOMDIR (records as dcmmkdir writes them)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage

from ingress.importer.sources import Archives, Item, listing
from pipeline.errors import PacsflowError
from tests.support import dicomdata


def _read(item: Item) -> bytes:
    with item.open() as opened:
        return opened.read()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path


def test_a_folder_is_walked_sorted_with_its_zips_and_without_its_dicomdir(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / "2").write_bytes(b"two")
    (tmp_path / "a" / "deeper" / "1").write_bytes(b"one")
    (tmp_path / "a" / "DICOMDIR").write_bytes(b"a directory, not an instance")
    members = {"IM1": b"first", "SUB/": b"", "SUB/IM2": b"second", "SUB/DICOMDIR": b"x"}
    _zip(tmp_path / "a" / "cd.zip", members)

    found = listing([tmp_path])
    try:
        names = [item.name for item in found.items]
        zipped = tmp_path / "a" / "cd.zip"
        assert names == [
            f"{zipped}!IM1",
            f"{zipped}!SUB/IM2",
            str(tmp_path / "a" / "deeper" / "1"),
            str(tmp_path / "b" / "2"),
        ]
        assert [_read(item) for item in found.items] == [b"first", b"second", b"one", b"two"]
        assert found.items[0].key == f"{zipped.absolute()}!IM1"
        assert found.problems == []
    finally:
        found.close()
    assert found.archives.held() == 0


def test_a_path_that_is_not_there_is_refused_before_anything(tmp_path: Path) -> None:
    (tmp_path / "here").write_bytes(b"x")
    with pytest.raises(PacsflowError, match=r"no such file or folder: .*nowhere"):
        listing([tmp_path / "here", tmp_path / "nowhere"])


def test_the_files_to_leave_out_are_not_listed(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(b"x")
    failures = tmp_path / "pacsflow-import-failures.tsv"
    failures.write_text("path\treason\n")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:  # named relative to the working folder, as `--failures` is by default
        found = listing([Path()], [Path("sub/../pacsflow-import-failures.tsv")])
    finally:
        os.chdir(cwd)
    assert [item.name for item in found.items] == ["IM1"]


def test_a_fifo_and_a_damaged_zip_are_problems_not_items(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    _zip(tmp_path / "good.zip", {"IM1": b"x"})
    (tmp_path / "good.zip").rename(tmp_path / "truncated.zip")
    data = (tmp_path / "truncated.zip").read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[:-10])  # the end of central directory cut

    found = listing([tmp_path])
    reasons = {problem.name: problem.reason for problem in found.problems}
    assert reasons[str(tmp_path / "pipe")] == "not a regular file"
    # Not a zip by its end records: an ordinary file, which the import finds is no DICOM.
    listed = [item.name for item in found.items]
    assert listed == [str(tmp_path / "broken.zip"), str(tmp_path / "truncated.zip")]


def test_thousands_of_zips_are_read_with_a_few_open(tmp_path: Path) -> None:
    count = 300
    for n in range(count):
        _zip(tmp_path / f"{n:04d}.zip", {"IM1": f"{n}-1".encode(), "IM2": f"{n}-2".encode()})
    found = listing([tmp_path])
    try:
        assert found.archives.held() == 0  # listing opens none for good
        # A member being read keeps its archive's file after the archive is closed for others.
        first = found.items[0].open()
        contents = []
        for item in found.items[1:]:
            with item.open() as member:
                contents.append(member.read())
            assert found.archives.held() <= 8
        assert first.read() == b"0-1"
        first.close()
        assert contents[:3] == [b"0-2", b"1-1", b"1-2"]
        assert len(contents) == 2 * count - 1
    finally:
        found.close()


def test_an_archive_read_by_several_threads_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    blobs = {f"IM{n}": os.urandom(200_000) for n in range(40)}
    archive = _zip(tmp_path / "cd.zip", blobs)
    archives = Archives(keep=1)
    try:

        def read(name: str) -> bytes:
            with archives.open(archive, name) as member:
                return member.read()

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(read, blobs)) == list(blobs.values())
    finally:
        archives.close()


def _media(folder: Path, count: int) -> list[str]:
    """A DICOMDIR and its files under ``folder``: uppercase IDs, as dcmmkdir writes them (it makes
    the integration test's media; pydicom's ``FileSet`` would leave a staging folder behind)."""
    datasets = dicomdata.ct_series(dicomdata.uid(91, 1), dicomdata.uid(91, 1, 1), count)
    records = []
    for n, ds in enumerate(datasets):
        file_id = ["DICOM", "SE000001", f"IM{n:06d}"]
        dicomdata.write(ds, folder.joinpath(*file_id))
        record = Dataset()
        record.DirectoryRecordType = "IMAGE"
        record.ReferencedFileID = file_id
        record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
        records.append(record)
    series = Dataset()
    series.DirectoryRecordType = "SERIES"  # no file of its own: passed over
    dicomdir = Dataset()
    dicomdir.FileSetID = "PACSFLOW"
    dicomdir.DirectoryRecordSequence = [series, *records]
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    dicomdir.file_meta.MediaStorageSOPInstanceUID = dicomdata.uid(91, 9)
    dicomdir.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir.save_as(folder / "DICOMDIR", enforce_file_format=True)
    return [str(ds.SOPInstanceUID) for ds in datasets]


def _sops(paths: list[Path]) -> set[str]:
    return {str(dicomdata.read(path).SOPInstanceUID) for path in paths}


def test_a_dicomdir_lists_the_files_its_records_reference(tmp_path: Path) -> None:
    sops = _media(tmp_path / "cd", 3)
    (tmp_path / "cd" / "STRAY").write_bytes(b"not referenced")
    found = listing([tmp_path / "cd" / "DICOMDIR"])
    assert found.problems == []
    assert _sops([item.path for item in found.items]) == set(sops)


def test_a_dicomdirs_ids_are_found_under_lowercased_names(tmp_path: Path) -> None:
    sops = _media(tmp_path / "cd", 3)
    # As a copy that lowered every name leaves it (the DICOMDIR's own name kept).
    for directory, folders, files in os.walk(tmp_path / "cd", topdown=False):
        for name in files + folders:
            if name != "DICOMDIR":
                Path(directory, name).rename(Path(directory, name.lower()))
    found = listing([tmp_path / "cd" / "DICOMDIR"])
    assert found.problems == []
    assert all(item.path.name.islower() for item in found.items)
    assert _sops([item.path for item in found.items]) == set(sops)


def test_a_file_a_dicomdir_references_but_lacks_is_a_problem(tmp_path: Path) -> None:
    _media(tmp_path / "cd", 2)
    found_before = listing([tmp_path / "cd" / "DICOMDIR"])
    missing = found_before.items[0].path
    missing.unlink()
    found = listing([tmp_path / "cd" / "DICOMDIR"])
    assert [problem.name for problem in found.problems] == [str(missing)]
    assert found.problems[0].reason.startswith("cannot read")
    assert len(found.items) == 1


def test_a_damaged_dicomdir_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    found = listing([tmp_path / "DICOMDIR"])
    assert found.items == []
    assert [problem.name for problem in found.problems] == [str(tmp_path / "DICOMDIR")]
    assert found.problems[0].reason.startswith("cannot read the DICOMDIR")
