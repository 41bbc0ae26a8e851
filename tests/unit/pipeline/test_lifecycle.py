"""A stop that a library deadlocks still ends the process."""

from __future__ import annotations

import subprocess
import sys
import time


def _run(program: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_a_stuck_stop_ends_the_process_with_status_1_and_says_so() -> None:
    # The main thread blocks for good, as mode's worker did after the broker left mid-stop.
    result, took = _run(
        "import threading; from pipeline import lifecycle; "
        "lifecycle.exit_if_stuck(0.5, 'the worker'); threading.Event().wait()"
    )
    assert result.returncode == 1
    assert "the worker did not stop within 0.5 s; exiting" in result.stderr
    assert took < 10


def test_a_process_that_ends_in_time_is_not_held_by_the_timer() -> None:
    result, took = _run("from pipeline import lifecycle; lifecycle.exit_if_stuck(20, 'the worker')")
    assert result.returncode == 0 and result.stderr == ""
    assert took < 10
