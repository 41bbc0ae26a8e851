"""The change feed (``GET .../changefeed``, ``.../changefeed/latest``) against real processes: a
follower long-polling with ``wait=`` sees every create, update (re-send) and delete exactly once,
in order; states and metadata follow; tenants are apart; bad parameters are 400s."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import query
from tests.support import dicomdata
from tests.support.dicomdata import uid
from tests.support.dimse import require_dcmtk, storescu
from tests.support.services import Broker, wait_for
from tests.support.stack import on_a_new_database

pytestmark = [pytest.mark.broker, pytest.mark.dcmtk]
Entry = dict[str, Any]


@dataclass
class Stack:
    base: str
    dsn: str
    scp_port: int

    def feed_url(self, tenant: str | None = None) -> str:
        prefix = f"/tenants/{tenant}/dicomweb" if tenant else "/dicomweb"
        return f"{self.base}{prefix}/changefeed"

    def feed(self, tenant: str | None = None, timeout: float = 10, **params: str | int) -> list[Entry]:
        answer = requests.get(self.feed_url(tenant), params=params, timeout=timeout)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("application/json")
        body: list[Entry] = answer.json()
        return body

    def latest_sequence(self, tenant: str | None = None) -> int:
        answer = requests.get(f"{self.feed_url(tenant)}/latest", timeout=10)
        if answer.status_code == 204:
            return 0
        assert answer.status_code == 200, answer.text
        return int(answer.json()["Sequence"])

    def everything_after(self, offset: int, **params: str) -> list[Entry]:
        found: list[Entry] = []
        while page := self.feed(offset=offset, limit=200, **params):
            found += page
            offset = page[-1]["Sequence"]
        return found

    def store(self, datasets: list[Any], folder: Path, called: str = "PACSFLOW") -> None:
        result = storescu(self.scp_port, dicomdata.write_all(datasets, folder), called=called)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack(broker: Broker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_dcmtk()
    tmp = tmp_path_factory.mktemp("changefeed")
    with on_a_new_database(
        broker.bootstrap,
        redis_url,
        tmp,
        scp={"PACSFLOW_SCP_TENANTS": "BETA=beta"},
        web={"PACSFLOW_VIEWER": "off"},
    ) as s:
        yield Stack(s.base, s.dsn, s.scp_port)


class Follower(threading.Thread):
    """A client following the feed: ``GET changefeed?offset=<last>&wait=10`` in a loop, until it has
    ``expected`` entries (or ``give_up_s`` pass)."""

    def __init__(self, stack: Stack, offset: int, expected: int, give_up_s: float = 180) -> None:
        super().__init__(daemon=True)
        self.stack, self.offset, self.expected = stack, offset, expected
        self.entries: list[Entry] = []
        self.failure: BaseException | None = None
        self._changed = threading.Condition()
        self._deadline = time.monotonic() + give_up_s

    def run(self) -> None:
        try:
            while len(self.entries) < self.expected and time.monotonic() < self._deadline:
                page = self.stack.feed(
                    offset=self.offset, wait=10, limit=25, includemetadata="false", timeout=30
                )
                with self._changed:
                    self.entries += page
                    self._changed.notify_all()
                if page:
                    self.offset = page[-1]["Sequence"]
        except BaseException as exc:
            self.failure = exc
        finally:
            with self._changed:
                self._changed.notify_all()

    def seen(self, count: int, timeout: float = 120) -> list[Entry]:
        """Once it has ``count`` entries (or has stopped): what it has."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.entries) >= count or not self.is_alive() or self.failure is not None,
                timeout,
            )
            assert self.failure is None, f"the follower failed: {self.failure!r}"
            assert len(self.entries) >= count, f"the follower saw {len(self.entries)} of {count}"
            return list(self.entries)


def test_a_follower_sees_every_create_update_and_delete_once_in_order(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().int % 10**12
    studies = [uid(run, s) for s in range(4)]
    sent = {study: dicomdata.ct_series(study, uid(run, s, 1), 25) for s, study in enumerate(studies)}
    everything = [ds for study in studies for ds in sent[study]]
    resent = [
        sent[studies[0]][3],
        sent[studies[0]][7],
        sent[studies[1]][0],
        sent[studies[2]][24],
        everything[60],
    ]
    # One of them re-sent, then deleted: create < update < delete.
    deleted = [sent[studies[0]][3], sent[studies[3]][10], sent[studies[1]][20]]
    start = stack.latest_sequence()
    follower = Follower(stack, start, 100 + len(resent) + len(deleted))
    follower.start()

    # Each study on an association of its own, all at once.
    senders = [
        threading.Thread(target=stack.store, args=(sent[study], tmp_path / study)) for study in studies
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    follower.seen(100)

    stack.store(resent, tmp_path / "again")
    follower.seen(100 + len(resent))

    for ds in deleted:
        path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        answer = requests.delete(f"{stack.base}/dicomweb{path}", timeout=10)
        assert answer.status_code == 202, answer.text
    seen = follower.seen(follower.expected)
    follower.join(30)
    assert not follower.is_alive()

    # Exactly these, each once, in strictly increasing sequence, no metadata (not asked for).
    expected = Counter(
        [("create", ds.SOPInstanceUID) for ds in everything]
        + [("update", ds.SOPInstanceUID) for ds in resent]
        + [("delete", ds.SOPInstanceUID) for ds in deleted]
    )
    assert Counter((e["Action"], e["SopInstanceUid"]) for e in seen) == expected
    sequences = [e["Sequence"] for e in seen]
    assert sequences == sorted(set(sequences)) and sequences[0] > start
    assert all("Metadata" not in e for e in seen)
    assert stack.feed(offset=sequences[-1]) == []  # and nothing after them
    # Per study, the creates in the order the association sent them.
    for study in studies:
        creates = [
            e["SopInstanceUid"] for e in seen if e["Action"] == "create" and e["StudyInstanceUid"] == study
        ]
        assert creates == [ds.SOPInstanceUID for ds in sent[study]]
    order = {(e["Action"], e["SopInstanceUid"]): e["Sequence"] for e in seen}
    doomed_resent = sent[studies[0]][3].SOPInstanceUID
    assert (
        order[("create", doomed_resent)] < order[("update", doomed_resent)] < order[("delete", doomed_resent)]
    )
    for ds in resent:
        assert order[("create", ds.SOPInstanceUID)] < order[("update", ds.SOPInstanceUID)]

    # States now, and metadata of current entries only.
    now = stack.everything_after(start)
    assert [e["Sequence"] for e in now] == sequences
    gone = {ds.SOPInstanceUID for ds in deleted}
    again = {ds.SOPInstanceUID for ds in resent} - gone
    for entry in now:
        sop, action = entry["SopInstanceUid"], entry["Action"]
        if sop in gone:
            want = "deleted"
        elif sop in again and action == "create":
            want = "replaced"
        else:
            want = "current"
        assert entry["State"] == want, entry
        if want == "current":
            assert entry["Metadata"]["00080018"]["Value"] == [sop]
            assert entry["Metadata"]["0020000D"]["Value"] == [entry["StudyInstanceUid"]]
            bulk = entry["Metadata"]["7FE00010"]["BulkDataURI"]
            assert bulk.startswith(f"{stack.base}/dicomweb/studies/{entry['StudyInstanceUid']}/")
        else:
            assert "Metadata" not in entry
        assert entry["Timestamp"].endswith("Z")

    # latest is the last delete; a time window picks entries by their timestamps.
    latest = requests.get(f"{stack.feed_url()}/latest", params={"includemetadata": "false"}, timeout=10)
    assert latest.status_code == 200 and latest.json()["Sequence"] == sequences[-1]
    assert latest.json()["Action"] == "delete" and "Metadata" not in latest.json()
    first, second = now[10], now[11]
    if first["Timestamp"] != second["Timestamp"]:
        window = stack.feed(offset=start, startTime=first["Timestamp"], endTime=second["Timestamp"])
        assert [e["Sequence"] for e in window] == [first["Sequence"]]
    assert stack.feed(offset=start, startTime=now[-1]["Timestamp"])[0]["Sequence"] == now[-1]["Sequence"]


def _a_waiting_request_is_answered_by_the_next_entry(stack: Stack, folder: Path) -> None:
    start = stack.latest_sequence()
    assert stack.feed(offset=start) == []  # the feed is idle
    answers: list[list[Entry]] = []
    waiting = threading.Thread(
        target=lambda: answers.append(stack.feed(offset=start, wait=30, timeout=40)), daemon=True
    )
    began = time.monotonic()
    waiting.start()
    run = uuid.uuid4().int % 10**12
    one = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 1)
    assert waiting.is_alive()  # it waits rather than answer [] at once
    stack.store(one, folder)
    waiting.join(35)
    assert answers, "the waiting request did not return"
    assert [(e["Action"], e["SopInstanceUid"]) for e in answers[0]] == [("create", one[0].SOPInstanceUID)]
    assert time.monotonic() - began < 30  # answered by the entry, not by the end of its wait


def test_a_waiting_request_is_answered_by_the_next_entry(stack: Stack, tmp_path: Path) -> None:
    _a_waiting_request_is_answered_by_the_next_entry(stack, tmp_path / "one")


def _listeners(dsn: str) -> set[int]:
    """The backends LISTENing to the feed's channel: the web process's listening connection."""
    rows = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    return {row["pid"] for row in rows}


def test_a_lost_listening_connection_comes_back_and_wakes_waiting_requests(
    stack: Stack, tmp_path: Path
) -> None:
    before = wait_for(lambda: _listeners(stack.dsn), 30, "the web process to LISTEN")
    # As a failover or an idle-session timeout ends it.
    query(stack.dsn, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(before))
    again = wait_for(lambda: _listeners(stack.dsn) - before, 30, "the web process to LISTEN again")
    assert again.isdisjoint(before)
    _a_waiting_request_is_answered_by_the_next_entry(stack, tmp_path / "one")


def test_tenants_see_only_their_own_entries(stack: Stack, tmp_path: Path) -> None:
    run = uuid.uuid4().int % 10**12
    beta = dicomdata.ct_series(uid(run, 1), uid(run, 1, 1), 2)
    mine = dicomdata.ct_series(uid(run, 2), uid(run, 2, 1), 1)
    beta_start, default_start = stack.latest_sequence("beta"), stack.latest_sequence()
    stack.store(beta, tmp_path / "beta", called="BETA")
    stack.store(mine, tmp_path / "default")
    beta_entries: list[Entry] = []
    while len(beta_entries) < 2:
        page = stack.feed("beta", offset=beta_start, wait=30, timeout=40)
        assert page, "no entry of tenant beta within 30 s"
        beta_entries += page
        beta_start = page[-1]["Sequence"]
    default_entries: list[Entry] = []
    while not default_entries:
        default_entries = stack.feed(offset=default_start, wait=30, timeout=40)
    assert {e["SopInstanceUid"] for e in beta_entries} == {ds.SOPInstanceUID for ds in beta}
    assert {e["SopInstanceUid"] for e in default_entries} == {mine[0].SOPInstanceUID}
    # Beta's metadata is under beta's root.
    assert beta_entries[0]["Metadata"]["7FE00010"]["BulkDataURI"].startswith(
        f"{stack.base}/tenants/beta/dicomweb/"
    )
    everything_default = {e["SopInstanceUid"] for e in stack.everything_after(0)}
    assert not everything_default & {ds.SOPInstanceUID for ds in beta}
    assert requests.get(f"{stack.feed_url('gamma')}/latest", timeout=10).status_code == 204
    assert stack.feed("gamma") == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": "0"}, "limit=0"),
        ({"limit": "1000"}, "limit=1000"),
        ({"offset": "-1"}, "offset=-1"),
        ({"startTime": "garbage"}, "startTime='garbage'"),
        ({"wait": "999"}, "wait=999"),
    ],
)
def test_bad_parameters_are_400_with_the_reason(stack: Stack, params: dict[str, str], says: str) -> None:
    answer = requests.get(stack.feed_url(), params=params, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["status"] == 400 and says in answer.json()["error"]
    latest = requests.get(f"{stack.feed_url()}/latest", params={"includemetadata": "maybe"}, timeout=10)
    assert latest.status_code == 400 and "includemetadata" in latest.json()["error"]
