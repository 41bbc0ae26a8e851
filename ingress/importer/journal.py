"""What `pacsflow import` has stored, so that a run started again skips it.

A file is entered only after the receiver returned, that is once its instance is on disk and its
events are in the outbox: a run killed between the two (even by SIGKILL) has not entered it, and
the next run stores it again, a harmless replace whose events are published again (delivery is at
least once). The index is not asked instead: an import must not need a worker to have caught up.

Files are known by their absolute source path, size and modification time, under one storage root
and tenant: a file changed since, or imported into another tenant, is imported again. The journal
is a SQLite file in the data folder (``<outbox>/imports/journal.sqlite``, beside the outboxes but
not one of them) in WAL mode with ``synchronous=NORMAL``: an entry survives the process being
killed; one lost to a power cut only costs that file being stored again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ingress.importer.sources import Item
from pipeline.errors import PacsflowError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS imported (
    storage_root TEXT NOT NULL,
    tenant       TEXT NOT NULL,
    source       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    stored       REAL NOT NULL,
    PRIMARY KEY (storage_root, tenant, source, size, mtime_ns)
) WITHOUT ROWID
"""


def journal_path(outbox_dir: Path) -> Path:
    # A folder of its own: the outbox publishers adopt every *.sqlite directly in outbox_dir.
    return outbox_dir / "imports" / "journal.sqlite"


class Journal:
    """The files stored into one storage root and tenant; shared by the import's threads."""

    def __init__(self, path: Path, storage_root: Path, tenant: str) -> None:
        self._scope = (str(storage_root.absolute()), tenant)
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise PacsflowError(
                f"cannot open the import journal {path}: {exc}; check the data folder"
            ) from exc

    def has(self, item: Item) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM imported WHERE storage_root = ? AND tenant = ? AND source = ? "
                "AND size = ? AND mtime_ns = ?",
                (*self._scope, item.key, item.size, item.mtime_ns),
            ).fetchone()
        return row is not None

    def add(self, item: Item, sop_instance_uid: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO imported VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*self._scope, item.key, item.size, item.mtime_ns, sop_instance_uid, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
