"""What ``/metrics`` reads of the outboxes (``outbox.backlogs``): depth and the oldest event's time,
of every outbox of a service, its owner alive or not, without taking it; an outbox spooled by an
older version (no ``appended`` column, or undated rows first) still counts, its age unknown."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pipeline import settings as settings_module
from pipeline.metrics.exposition import outbox_families
from pipeline.outbox import Message, Outbox, backlogs


def _messages(n: int) -> list[Message]:
    return [Message("storage_queue", b"k", f"v{i}".encode()) for i in range(n)]


def test_depth_and_oldest_of_each_outbox_of_the_service(tmp_path: Path) -> None:
    first, second = Outbox.open_slot(tmp_path, "scp"), Outbox.open_slot(tmp_path, "scp")
    web = Outbox.open_slot(tmp_path, "web")
    before = time.time()
    first.append(_messages(3))
    second.append(_messages(2))
    web.append(_messages(7))
    found = backlogs(tmp_path, "scp")  # read while their owners hold them
    assert sorted(b.pending for b in found.values()) == [2, 3]
    assert all(b.oldest is not None and before <= b.oldest <= time.time() for b in found.values())
    first.ack(first.peek(10)[-1][0])
    assert sorted(b.pending for b in backlogs(tmp_path, "scp").values()) == [0, 2]
    for outbox in (first, second, web):
        outbox.close()


def _legacy_outbox(path: Path) -> None:
    """An outbox as a version before the ``appended`` column spooled it: one message waiting."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "key BLOB NOT NULL, value BLOB NOT NULL)"
    )
    db.execute("INSERT INTO outbox (topic, key, value) VALUES ('storage_queue', x'00', x'00')")
    db.commit()
    db.close()


def test_an_outbox_not_yet_migrated_still_counts(tmp_path: Path) -> None:
    _legacy_outbox(tmp_path / "scp-0.sqlite")  # no `appended` column: its age cannot be read
    (found,) = backlogs(tmp_path, "scp").values()
    assert (found.pending, found.oldest) == (1, None)


def test_an_undated_message_first_leaves_the_age_unknown_not_zero(tmp_path: Path) -> None:
    settings = settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path)})
    old = settings.outbox_dir / "scp-0.sqlite"
    old.parent.mkdir(parents=True)
    _legacy_outbox(old)
    outbox = Outbox.open_slot(settings.outbox_dir, "scp")
    assert outbox.path == old
    outbox.append(_messages(1))
    (found,) = backlogs(settings.outbox_dir, "scp").values()
    assert (found.pending, found.oldest) == (2, None)  # the old row first: its age is unknown
    depth, age = outbox_families(settings, "scp")
    assert depth.samples[0].value == 2
    assert age.samples == []  # not 0, which would say nothing waits

    outbox.ack(outbox.peek(1)[0][0])  # the undated one published: the next is dated
    depth, age = outbox_families(settings, "scp")
    assert depth.samples[0].value == 1
    assert [s.value >= 0 for s in age.samples] == [True]
    outbox.close()


def test_the_depth_follows_appends_and_acks(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")
    for n in (5, 1, 7):
        outbox.append(_messages(n))
    assert outbox.pending() == 13
    outbox.ack(outbox.peek(6)[-1][0])
    outbox.append(_messages(2))
    (found,) = backlogs(tmp_path, "scp").values()
    assert found.pending == outbox.pending() == 9
    outbox.ack(outbox.peek(100)[-1][0])
    assert backlogs(tmp_path, "scp")[outbox.path].pending == 0
    outbox.append(_messages(1))  # numbered after the acked ones, never again from 1
    assert backlogs(tmp_path, "scp")[outbox.path].pending == 1
    outbox.close()


def test_the_gauges_sum_the_service_and_age_its_oldest_event(tmp_path: Path) -> None:
    settings = settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path)})
    assert [f.samples[0].value for f in outbox_families(settings, "scp")] == [0, 0.0]  # none yet
    outbox = Outbox.open_slot(settings.outbox_dir, "scp")
    outbox.append(_messages(4))
    depth, age = outbox_families(settings, "scp")
    assert depth.samples[0].labels == {"service": "scp"} and depth.samples[0].value == 4
    assert 0 <= age.samples[0].value < 60
    outbox.close()


def test_the_scp_shows_an_imports_outbox_beside_its_own(tmp_path: Path) -> None:
    settings = settings_module.load({"PACSFLOW_DATA_DIR": str(tmp_path)})
    scp = Outbox.open_slot(settings.outbox_dir, "scp")
    imported = Outbox.open_slot(settings.outbox_dir, "import")
    scp.append(_messages(1))
    imported.append(_messages(3))
    depth, age = outbox_families(settings, "scp", "import")
    assert {s.labels["service"]: s.value for s in depth.samples} == {"scp": 1, "import": 3}
    assert {s.labels["service"] for s in age.samples} == {"scp", "import"}
    imported.close()
    scp.close()
