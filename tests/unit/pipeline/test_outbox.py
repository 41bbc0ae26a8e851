from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import OutboxError
from pipeline.outbox import Message, Outbox


def messages(n: int, start: int = 0) -> list[Message]:
    return [Message("storage_queue", b"k", f"v{i}".encode()) for i in range(start, start + n)]


def test_append_peek_ack_in_order(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")
    outbox.append(messages(3))
    outbox.append(messages(2, start=3))
    rows = outbox.peek(4)
    assert [m.value for _, m in rows] == [b"v0", b"v1", b"v2", b"v3"]
    outbox.ack(rows[1][0])
    assert [m.value for _, m in outbox.peek(10)] == [b"v2", b"v3", b"v4"]
    assert outbox.pending() == 3
    outbox.close()


def test_spooled_messages_survive_reopening(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")
    outbox.append(messages(5))
    outbox.close()
    again = Outbox.open_slot(tmp_path, "scp")
    assert again.path == outbox.path, "a restarted process finds its own outbox"
    assert [m.value for _, m in again.peek(10)] == [f"v{i}".encode() for i in range(5)]
    again.close()


def test_a_live_outbox_is_never_shared(tmp_path: Path) -> None:
    first = Outbox.open_slot(tmp_path, "scp")
    second = Outbox.open_slot(tmp_path, "scp")
    assert first.path != second.path
    assert list(Outbox.orphans(tmp_path, keep=first.path)) == []
    first.close()
    second.close()


def test_orphans_are_the_unlocked_outboxes(tmp_path: Path) -> None:
    mine = Outbox.open_slot(tmp_path, "scp")
    gone = Outbox.open_slot(tmp_path, "scp")
    gone.append(messages(2))
    gone.close()  # its process ended
    orphans = list(Outbox.orphans(tmp_path, keep=mine.path))
    assert [o.path for o in orphans] == [gone.path]
    assert orphans[0].pending() == 2
    orphans[0].close(remove=True)
    assert not gone.path.exists()
    mine.close()


def test_concurrent_appends_are_committed_together_each_whole_and_in_its_own_order(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")

    def append(writer: int) -> None:
        for n in range(20):
            outbox.append(
                [Message("storage_queue", b"k", f"{writer}-{n}-{part}".encode()) for part in range(3)]
            )

    threads = [threading.Thread(target=append, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = [message.value.decode() for _, message in outbox.peek(1000)]
    assert len(values) == 8 * 20 * 3
    for writer in range(8):
        mine = [v for v in values if v.startswith(f"{writer}-")]
        assert mine == [f"{writer}-{n}-{part}" for n in range(20) for part in range(3)]
    for at in range(0, len(values), 3):  # an append's messages are never split by another's
        assert len({v.rsplit("-", 1)[0] for v in values[at : at + 3]}) == 1
    outbox.close()


def test_a_failed_commit_fails_every_append_it_held(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")
    outbox._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(OutboxError, match="refused"):
        outbox.append(messages(2))
    outbox._db.execute("DROP TRIGGER refuse")
    outbox.append(messages(1))
    assert outbox.pending() == 1
    outbox.close()


def test_appends_that_meet_a_commit_under_way_share_the_next_one(tmp_path: Path) -> None:
    outbox = Outbox.open_slot(tmp_path, "scp")
    committing, go = threading.Event(), threading.Event()
    commit = outbox._commit

    def held_commit(rows: list[tuple[str, bytes, bytes]]) -> Exception | None:
        if outbox.commits == 0:  # the first commit waits, holding the turn, while others queue
            committing.set()
            assert go.wait(30)
        return commit(rows)

    outbox._commit = held_commit  # type: ignore[method-assign]
    first = threading.Thread(target=outbox.append, args=(messages(1),))
    first.start()
    assert committing.wait(30)
    others = [threading.Thread(target=outbox.append, args=(messages(2, start=1 + 2 * n),)) for n in range(3)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 30
    while len(outbox._queued) < 3:  # each has queued its rows and waits for its turn
        assert time.monotonic() < deadline, "the appenders never queued"
        time.sleep(0.001)
    assert outbox.pending() == 0
    go.set()
    for thread in [first, *others]:
        thread.join(30)
    assert outbox.commits == 2, "three appends that met one commit share the next"
    assert outbox.pending() == 7
    outbox.close()


_APPEND_ACK_AND_WAIT = """
import sys
from pathlib import Path
from pipeline.outbox import Message, Outbox

outbox = Outbox.open_slot(Path(sys.argv[1]), "scp")
outbox.append([Message("storage_queue", b"k", b"v%d" % i) for i in range(3)])
outbox.ack(outbox.peek(2)[-1][0])
outbox.append([Message("storage_queue", b"k", b"v3")])
print("appended", flush=True)
sys.stdin.read()  # killed here, with nothing closed
"""


def test_what_append_returned_survives_a_kill_and_an_ack_only_ever_republishes(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _APPEND_ACK_AND_WAIT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"appended\n"
        child.kill()
    outbox = Outbox.open_slot(tmp_path, "scp")
    values = [m.value for _, m in outbox.peek(10)]
    assert values[-2:] == [b"v2", b"v3"], "an append that returned is never lost"
    assert values in ([b"v2", b"v3"], [b"v0", b"v1", b"v2", b"v3"]), "a lost ack republishes, in order"
    outbox.close()
