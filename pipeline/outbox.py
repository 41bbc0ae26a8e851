"""The durable outbox: events are spooled on disk before a store succeeds, then published to Kafka.

Each process that stores instances (the SCP, the web server's STOW) owns one outbox file, a SQLite
database in WAL mode whose appends commit with ``synchronous=FULL``: when ``append`` returns, the
events survive a crash or a power cut. A publisher task sends them in the order they were appended
and deletes them only after the broker acknowledged them, so a broker that is down, hung or
restarted costs latency, never an event. Appends that arrive while a commit is under way (other
associations, other STOW-RS parts) are committed together in the next transaction: one fsync for
all of them, each caller still returning only once its own messages are durable. The publisher
reads and deletes on a connection of its own with ``synchronous=NORMAL``: its reads never wait for
an append's commit, and a delete is not fsynced. A delete lost in a crash only publishes its
messages again, which delivery at least once allows (consumers are idempotent); the next append's
commit fsyncs the log with the delete in it anyway. A process takes the first free slot
``<name>-<n>.sqlite`` (held with ``flock``), so a restarted process finds its own leftovers;
outboxes of processes that are gone for good (fewer replicas than before) are adopted and drained
by whichever publisher finds them unlocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying

from pipeline import log
from pipeline.errors import OutboxError, StorageFull
from pipeline.retries import until_it_works
from pipeline.settings import Settings
from pipeline.topics import BROKER_FAILURES, ensure_topics

_log = log.get(__name__)
_FAILURES = BROKER_FAILURES
_CYCLES_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key   BLOB NOT NULL,
    value BLOB NOT NULL,
    appended REAL
)
"""
# `appended` (Unix time) came later: an outbox spooled by an older version gets the column, its
# earlier rows none (their age is unknown: /metrics leaves the age out while one is first).
_APPENDED = "ALTER TABLE outbox ADD COLUMN appended REAL"


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes
    value: bytes


class Outbox:
    """One process's spool of messages bound for Kafka, in append order."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        # Group commit: appenders queue their rows; whoever finds no commit under way commits
        # every queued append in one transaction, and wakes the others with the outcome.
        self._turn = threading.Condition()
        self._queued: list[tuple[int, list[tuple[str, bytes, bytes, float]]]] = []
        self._committing = False
        self._tickets = 0
        self._outcomes: dict[int, Exception | None] = {}
        self._reading = threading.Lock()  # the publisher's connection: one user at a time
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            if "appended" not in {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}:
                self._db.execute(_APPENDED)
            self._publishing = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._publishing.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise OutboxError(f"cannot open the outbox {path}: {exc}; check the data folder") from exc
        self.commits = 0
        """Transactions that appended: fewer than appends when appends meet."""

    @classmethod
    def open_slot(cls, directory: Path, name: str) -> Outbox:
        """Open the first outbox ``<name>-<n>`` that no live process holds."""
        directory.mkdir(parents=True, exist_ok=True)
        for slot in range(1024):
            path = directory / f"{name}-{slot}.sqlite"
            fd = _try_lock(path)
            if fd is not None:
                return cls(path, fd)
        raise OutboxError(f"no free outbox slot for {name!r} in {directory}")

    @classmethod
    def orphans(cls, directory: Path, keep: Path) -> Iterator[Outbox]:
        """Outboxes in ``directory`` that no live process holds (their owner is gone)."""
        for path in sorted(directory.glob("*.sqlite")):
            if path == keep:
                continue
            fd = _try_lock(path)
            if fd is not None:
                yield cls(path, fd)

    def append(self, messages: Sequence[Message]) -> None:
        """Spool ``messages`` in one transaction (with any appended meanwhile); durable when this
        returns. Raises ``StorageFull`` or ``OutboxError`` when they were not spooled."""
        now = time.time()
        rows = [(m.topic, m.key, m.value, now) for m in messages]
        with self._turn:
            ticket = self._tickets
            self._tickets += 1
            self._queued.append((ticket, rows))
            while ticket not in self._outcomes:
                if self._committing:
                    self._turn.wait()
                    continue
                batch, self._queued = self._queued, []
                self._committing = True
                self._turn.release()
                try:
                    outcome = self._commit([row for _, queued in batch for row in queued])
                finally:
                    self._turn.acquire()
                    self._committing = False
                for queued_ticket, _ in batch:
                    self._outcomes[queued_ticket] = outcome
                self._turn.notify_all()
            error = self._outcomes.pop(ticket)
        if error is not None:
            raise error

    def _commit(self, rows: list[tuple[str, bytes, bytes, float]]) -> Exception | None:
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO outbox (topic, key, value, appended) VALUES (?, ?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                error: Exception = (
                    StorageFull(f"no space left for the outbox {self.path}: free disk space")
                    if "full" in str(exc)
                    else OutboxError(f"cannot append to the outbox {self.path}: {exc}")
                )
                error.__cause__ = exc
                return error
        return None

    def peek(self, limit: int) -> list[tuple[int, Message]]:
        with self._reading:
            rows = self._publishing.execute(
                "SELECT id, topic, key, value FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(row[0], Message(row[1], bytes(row[2]), bytes(row[3]))) for row in rows]

    def ack(self, through_id: int) -> None:
        """Forget every message up to ``through_id``: the broker has them. Not fsynced (see above)."""
        # Under the appenders' mutex too: two connections writing at once would meet SQLite's busy
        # handler, which sleeps.
        with self._reading, self._mutex:
            self._publishing.execute("DELETE FROM outbox WHERE id <= ?", (through_id,))

    def pending(self) -> int:
        with self._reading:
            return _depth(self._publishing)

    def close(self, *, remove: bool = False) -> None:
        with self._reading, self._mutex:
            self._publishing.close()
            self._db.close()
            if remove:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            os.close(self._lock_fd)


def _depth(db: sqlite3.Connection) -> int:
    # Not count(*), which reads every row: a long broker outage spools millions, and a scrape
    # reads this in a thread its timeout cannot stop. Ids come from AUTOINCREMENT (never reused,
    # a rolled-back append rolls its numbers back too) and `ack` deletes only a prefix, so the
    # rows left are exactly min(id)..max(id); each subquery is one b-tree descent.
    low, high = db.execute("SELECT (SELECT min(id) FROM outbox), (SELECT max(id) FROM outbox)").fetchone()
    return 0 if low is None else int(high) - int(low) + 1


@dataclass(frozen=True)
class Backlog:
    """What one outbox holds: how many messages, and when its oldest was appended (None: unknown,
    or none waits)."""

    pending: int
    oldest: float | None


def backlogs(directory: Path, name: str) -> dict[Path, Backlog]:
    """The backlog of each outbox ``<name>-<n>`` in ``directory``, its owner alive or not, read
    without taking it (WAL readers never block its writers). One that cannot be read is left out.

    The oldest message's time is the first row's: a row spooled before the ``appended`` column
    existed has none, and its outbox's age is then unknown until that row is published (rather
    than skipping to the first dated row, which would scan every undated one)."""
    found = {}
    for path in sorted(directory.glob(f"{name}-*.sqlite")):
        try:
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            continue
        try:
            pending = _depth(db)
        except sqlite3.Error:
            db.close()
            continue  # removed meanwhile (adopted and drained), or not created yet
        try:
            # Apart from the depth: a file not yet opened by this version has no `appended`
            # column, and its messages still count.
            first = db.execute("SELECT appended FROM outbox ORDER BY id LIMIT 1").fetchone()
            oldest = first[0] if first else None
        except sqlite3.Error:
            oldest = None
        finally:
            db.close()
        found[path] = Backlog(pending, oldest)
    return found


@contextlib.contextmanager
def held(path: Path) -> Iterator[bool]:
    """Whether the outbox ``path`` could be taken (no live process holds it); if so, it is held
    until the block ends, so that none takes it meanwhile. The outbox itself is neither opened nor made."""
    fd = _try_lock(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class OutboxPublisher:
    """Publishes an outbox to Kafka, in order, until stopped; survives any broker outage."""

    def __init__(
        self, settings: Settings, outbox: Outbox, *, batch_size: int = 500, linger_s: float = 0.01
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._listening = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = False
        self._orphans_checked = float("-inf")
        self.published = 0

    def notify(self) -> None:
        """Wake the publisher; safe to call from any thread. Only a publisher that may be about to
        wait is woken (one publishing or lingering looks again anyway), and notifications that
        arrive before the loop has run the last one's callback share it: a wake-up of the loop (a
        write to its self-pipe) per quiet spell, not one per store."""
        loop = self._loop
        if not self._listening or self._wake_pending or loop is None or loop.is_closed():
            return
        self._wake_pending = True
        loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._wake_pending = False  # before the wake: a notify from now on schedules its own
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._retrying()(self._attempt, self._cycles)

    async def _cycles(self) -> None:
        """Cycles for about a second: the retry policy (its backoff starts afresh after each
        success) is set up once a second rather than once a batch."""
        assert self._loop is not None
        until = self._loop.time() + _CYCLES_S
        while not self._stopping and self._loop.time() < until:
            await self._cycle()

    async def _cycle(self) -> None:
        """Adopt orphaned outboxes now and then; publish a batch, or wait to be woken."""
        assert self._loop is not None
        if self._loop.time() - self._orphans_checked > 30:
            await self._drain_orphans()
            self._orphans_checked = self._loop.time()
        # Listening and cleared before looking: an append that comes after the look wakes the wait.
        self._listening = True
        self._wake.clear()
        published = await self._publish_batch(self._outbox)
        if not published:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            return
        self._listening = False  # it looks again after this batch (and the linger) regardless
        if published < self._batch_size:
            # While stores keep coming, publish what a few milliseconds gathered, not each as it
            # comes: every batch costs a read, a produce request per partition and a delete, the
            # same for one message as for a hundred, on the core the stores need. The first
            # store after a quiet spell is still published at once.
            await asyncio.sleep(self._linger_s)

    def _retrying(self) -> AsyncRetrying:
        return until_it_works(
            "outbox_publish_failed",
            _FAILURES,
            pending=self._outbox.pending,
            bootstrap=self._settings.kafka_bootstrap,
        )

    async def _attempt(self, operation: Callable[[], Awaitable[None]]) -> None:
        """Run ``operation``; after a failure, the next attempt starts on a new connection."""
        try:
            await operation()
        except _FAILURES:
            await self._close_producer()
            raise

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Publish what is pending for up to ``drain_timeout_s``; what is left stays spooled."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(drain_timeout_s):
                while self._producer is not None and await self._publish_batch(self._outbox):
                    pass
        await self._close_producer()

    async def flush(self, timeout_s: float = 120.0) -> None:
        """Publish everything spooled now, retrying through outages; give up after ``timeout_s``."""
        self._loop = asyncio.get_running_loop()

        async def publish_all() -> None:
            while await self._publish_batch(self._outbox):
                pass

        try:
            async with asyncio.timeout(timeout_s):
                await self._retrying()(self._attempt, publish_all)
        finally:
            await self._close_producer()

    async def _drain_orphans(self) -> None:
        for orphan in Outbox.orphans(self._outbox.path.parent, keep=self._outbox.path):
            try:
                while await self._publish_batch(orphan):
                    pass
            except BaseException:
                orphan.close()
                raise
            _log.info("outbox_adopted", path=str(orphan.path))
            orphan.close(remove=True)

    async def _publish_batch(self, outbox: Outbox) -> int:
        rows = await asyncio.to_thread(outbox.peek, self._batch_size)
        if not rows:
            return 0
        producer = await self._connect()
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self._settings.kafka_request_timeout_s * 2):
                for _, message in rows:
                    futures.append(await producer.send(message.topic, message.value, key=message.key))
                await asyncio.gather(*futures)
        finally:
            for future in futures:  # on failure, retrieve what the others did so none is left unread
                if future.done() and not future.cancelled():
                    future.exception()
        await asyncio.to_thread(outbox.ack, rows[-1][0])
        self.published += len(rows)
        return len(rows)

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        settings = self._settings
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"pacsflow-{settings.node_id}",
            acks="all",
            linger_ms=2,
            request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        )
        try:
            await producer.start()
            created = await ensure_topics(settings)
        except BaseException:
            await producer.stop()
            raise
        if created:
            _log.info("topics_created", topics=created, partitions=settings.kafka_partitions)
        _log.info("outbox_connected", bootstrap=settings.kafka_bootstrap, pending=self._outbox.pending())
        self._producer = producer
        return producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await producer.stop()
