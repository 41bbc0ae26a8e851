"""What `pacsflow import` keeps between runs and beside them: the journal of what it stored, the
failures file, and the copy folders of import slots (real SQLite, real files, real ``flock``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from ingress.importer.journal import Journal, journal_path
from ingress.importer.run import INCOMING, Failures, _sweep
from ingress.importer.sources import Item
from pipeline.errors import PacsflowError
from pipeline.outbox import Outbox
from pipeline.settings import load


def _item(path: Path) -> Item:
    stat = path.stat()
    return Item(str(path), str(path.absolute()), stat.st_size, stat.st_mtime_ns, path)


def test_a_file_stored_is_known_until_it_changes(tmp_path: Path) -> None:
    source = tmp_path / "IM1"
    source.write_bytes(b"first")
    journal = Journal(journal_path(tmp_path / "outbox"), tmp_path / "storage", "t1")
    try:
        assert not journal.has(_item(source))
        journal.add(_item(source), "1.2.3")
        assert journal.has(_item(source))
        source.write_bytes(b"second, longer")  # changed since: imported again
        assert not journal.has(_item(source))
    finally:
        journal.close()


def test_the_journal_outlives_the_run_per_storage_root_and_tenant(tmp_path: Path) -> None:
    source = tmp_path / "IM1"
    source.write_bytes(b"x")
    path = journal_path(tmp_path / "outbox")
    first = Journal(path, tmp_path / "storage", "t1")
    first.add(_item(source), "1.2.3")
    first.close()
    assert path.parent.name == "imports"  # not where the publishers adopt outboxes
    for root, tenant, known in [
        (tmp_path / "storage", "t1", True),
        (tmp_path / "storage", "t2", False),
        (tmp_path / "other", "t1", False),
    ]:
        journal = Journal(path, root, tenant)
        try:
            assert journal.has(_item(source)) is known, (root, tenant)
        finally:
            journal.close()


def test_a_journal_that_cannot_be_opened_names_the_data_folder(tmp_path: Path) -> None:
    (tmp_path / "outbox").write_bytes(b"a file where the folder should be")
    with pytest.raises(PacsflowError, match=r"cannot open the import journal .*check the data folder"):
        Journal(journal_path(tmp_path / "outbox"), tmp_path / "storage", "t1")


def test_failures_are_tsv_that_a_csv_reader_reads_back(tmp_path: Path) -> None:
    out = io.StringIO(newline="")
    failures = Failures(out)
    names = ["plain/IM1", "a\ttab", "a\nnewline", 'a "quote"', "cd.zip!IMAGES/IM2"]
    for name in names:
        assert failures.add(name, "not a\tDICOM\nfile ") == "not a DICOM file"
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline=""), delimiter="\t"))
    assert rows == [["path", "reason"], *[[name, "not a DICOM file"] for name in names]]
    # What needs no quoting is not quoted: `cut -f1` and a split on tabs read it as before.
    assert out.getvalue().splitlines()[1] == "plain/IM1\tnot a DICOM file"


def test_the_sweep_removes_the_copies_of_slots_no_import_holds(tmp_path: Path) -> None:
    settings = load({"PACSFLOW_DATA_DIR": str(tmp_path / "var")})
    incoming = settings.storage_root / INCOMING
    for slot in ("import-0", "import-1", "import-2"):
        (incoming / slot).mkdir(parents=True)
        (incoming / slot / "left.tmp").write_bytes(b"a killed run's copy")
    held = Outbox.open_slot(settings.outbox_dir, "import")  # another import, running: import-0
    try:
        assert held.path.stem == "import-0"
        _sweep(settings, incoming / "import-1")  # this run's own slot
        assert (incoming / "import-0" / "left.tmp").exists()  # the running import's: kept
        assert list((incoming / "import-1").iterdir()) == []  # ours: emptied
        assert not (incoming / "import-2").exists()  # nobody's: removed
    finally:
        held.close(remove=True)
    _sweep(settings, incoming / "import-1")
    assert [p.name for p in incoming.iterdir()] == ["import-1"]
