"""`freeze`: stop a process with SIGSTOP at a moment it holds no exclusive file lock.

A test that freezes a worker to let its lease lapse means "it went silent", not
"it went silent in the middle of a write": a process stopped while it holds the
``flock`` of a JSON-file run or claim, or SQLite's write lock, keeps every other
process of the store waiting until it is resumed or dies (no store can take a
kernel lock from a live holder). That is the stores' documented behaviour, and
a different test from the one about leases. So the freeze is retried until the
stopped process holds no WRITE lock, read from ``/proc/locks``; each try costs
the process a few microseconds of its time, and the deadline bounds a failure.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests._barriers import DEADLINE, wait_until

_TRY_EVERY = 0.005


def _stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (SIGSTOP reaches the threads one by one)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        if state not in ("T", "t"):
            return False
    return True


def write_locks(pid: int) -> list[str]:
    """The exclusive file locks (flock, POSIX) ``pid`` holds now, as ``/proc/locks`` lines."""
    held = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; a waiter's line has "->" first.
        if len(fields) < 5 or fields[1] == "->":
            continue
        if fields[3] == "WRITE" and fields[4] == str(pid):
            held.append(line)
    return held


def freeze(pid: int, *, timeout: float = DEADLINE) -> None:
    """SIGSTOP ``pid`` at a moment it holds no exclusive file lock; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), awaiting=f"process {pid} stopped")
        held = write_locks(pid)
        if not held:
            return
        os.kill(pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"process {pid} held a file lock at every try for {timeout:g} s: {held}"
            )
        time.sleep(_TRY_EVERY)  # lets it run on to its release; the next try checks again
