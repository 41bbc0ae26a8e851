"""Parts a dead web process left half-streamed are swept at start; parts in flight are not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from egress.wado.stow import LEFTOVER_AFTER_S, _sweep


def test_only_leftovers_older_than_any_request_are_removed(tmp_path: Path) -> None:
    now = time.time()
    old, fresh, other = tmp_path / "a.tmp", tmp_path / "b.tmp", tmp_path / "c.dcm"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
        os.utime(path, (now - LEFTOVER_AFTER_S - 60, now - LEFTOVER_AFTER_S - 60))
    os.utime(fresh, (now - 60, now - 60))
    assert _sweep(tmp_path, now) == ["a.tmp"]
    assert not old.exists() and fresh.exists() and other.exists()
