"""The writers' lock of `SqliteBackend`: an ``flock`` on ``<db>-writer.lock`` around each batch.

SQLite's own write lock is the one that guards the data; this one only makes
writers of several processes take turns well. A writer that finds SQLite's
lock taken sleeps in SQLite's busy handler for 1, 2, 5, 10 ... 100 ms steps and
polls, so a waiting process oversleeps the other's commit while its queue
fills, and the other takes the file again. Measured with two processes on one
file (benchmark (b)), the second one's ``BEGIN IMMEDIATE`` waits took as long
as the other's transactions. Blocked in ``flock`` instead, the waiter wakes as
the holder lets go, and takes SQLite's lock at once.

* The kernel drops an ``flock`` when its holder dies, so a process killed while
  holding it (SIGKILL, the crash tests) never blocks the others.
* Reads never take it; neither do other programs on the file, which still meet
  SQLite's lock and ``busy_timeout``.
* Each acquisition opens its own descriptor and closing it lets go, so a
  waiter that gave up (after ``busy_timeout``) can never release a lock taken
  later; a child forked while one is held closes its copy at once, so it never
  keeps the lock after the parent released it.
* Where the lock file cannot be opened (a read-only directory, no ``fcntl``),
  batches run without it, on SQLite's lock alone.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from typing import Final

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: SQLite's lock alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriterLock"]

SUFFIX: Final = "-writer.lock"

_held: set[int] = set()
"""Descriptors holding a writers' lock in this process, closed in a forked child."""
_held_guard = threading.Lock()


def _close_in_child() -> None:
    global _held_guard
    _held_guard = threading.Lock()  # another thread may have held it at the fork
    for fd in list(_held):
        with suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class _Waiter:
    """Blocks in ``flock`` on one descriptor in a helper thread, so the wait has a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._guard = threading.Lock()
        self._got = threading.Event()
        self._abandoned = False

    def block(self) -> None:
        assert fcntl is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            os.close(self.fd)
            return
        with self._guard:
            if self._abandoned:  # too late: let go at once
                os.close(self.fd)
                return
            with _held_guard:
                _held.add(self.fd)
            self._got.set()

    def wait(self, timeout: float) -> bool:
        got = self._got.wait(timeout)
        with self._guard:
            if got or self._got.is_set():
                return True
            self._abandoned = True  # the helper closes the descriptor
            return False


class WriterLock:
    """The ``flock`` that a writer holds from ``BEGIN IMMEDIATE`` to ``COMMIT``."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + SUFFIX
        self.waits = 0
        """Acquisitions that found the lock taken (they waited)."""

    def acquire(self, timeout: float) -> int | None:
        """The descriptor holding the lock; -1 if there is no lock file; None after ``timeout``."""
        if fcntl is None:
            return -1
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        except OSError:
            os.close(fd)
            return -1
        else:
            with _held_guard:
                _held.add(fd)
            return fd
        self.waits += 1
        waiter = _Waiter(fd)
        threading.Thread(target=waiter.block, name=f"flock {self.path}", daemon=True).start()
        return fd if waiter.wait(timeout) else None

    @staticmethod
    def release(fd: int) -> None:
        """Let go of the lock held by ``fd`` (from `acquire`); -1 is nothing to release."""
        if fd < 0:
            return
        with _held_guard:
            _held.discard(fd)
        os.close(fd)
