"""Barriers for tests that wait for another process, thread or task to get somewhere.

A sleep is never a barrier: on a busy machine the other side takes longer than
any guess (starting Python and importing the package can take 5 s and more when
other processes compete for two cores). These helpers wait for a *signal* (a
file a child creates, an entry in a folder, a store state, a counter) and give
up only after a generous deadline, with a message that says what was awaited.
The deadline bounds a failure; it never decides a success.

Child processes run as scripts cannot import this module (``tests`` is not on
their path); they poll with a deadline of their own (see ``tests/crash/child.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

DEADLINE = 60.0
"""Seconds to wait for a signal before failing: far above any healthy wait, even under load."""

_INTERVAL = 0.01


def _exited(processes: Sequence[subprocess.Popen[Any]]) -> str | None:
    """A description of the first process that has already exited, if any."""
    for proc in processes:
        if proc.poll() is None:
            continue
        try:
            _, err = proc.communicate(timeout=5)
        except (ValueError, subprocess.TimeoutExpired):  # streams already read or closed
            err = ""
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        return f"process {proc.pid} exited with {proc.returncode} first:\n{(err or '')[-3000:]}"
    return None


def wait_until(
    condition: Callable[[], bool],
    *,
    awaiting: str,
    timeout: float = DEADLINE,
    processes: Sequence[subprocess.Popen[Any]] = (),
) -> None:
    """Poll ``condition`` until it holds; fail naming ``awaiting`` after ``timeout`` seconds.

    ``processes`` are the children expected to stay alive while we wait: when
    one of them exits first, the wait fails at once with its stderr instead of
    running into the deadline.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        gone = _exited(processes)
        if gone is not None:
            raise AssertionError(f"while waiting for {awaiting}: {gone}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {awaiting}")
        time.sleep(_INTERVAL)


def wait_for_path(
    path: Path,
    *,
    awaiting: str,
    timeout: float = DEADLINE,
    processes: Sequence[subprocess.Popen[Any]] = (),
) -> None:
    """Wait until ``path`` exists (a file another process creates when it is ready)."""
    wait_until(
        path.exists,
        awaiting=f"{awaiting} ({path} to exist)",
        timeout=timeout,
        processes=processes,
    )


def wait_for_entries(
    folder: Path,
    count: int,
    *,
    awaiting: str,
    timeout: float = DEADLINE,
    processes: Sequence[subprocess.Popen[Any]] = (),
) -> list[Path]:
    """Wait until ``folder`` holds at least ``count`` entries (one per ready party); list them."""

    def entries() -> list[Path]:
        return sorted(folder.iterdir()) if folder.exists() else []

    wait_until(
        lambda: len(entries()) >= count,
        awaiting=f"{awaiting} ({count} entries in {folder})",
        timeout=timeout,
        processes=processes,
    )
    return entries()


async def wait_until_async(
    condition: Callable[[], bool | Awaitable[bool]], *, awaiting: str, timeout: float = DEADLINE
) -> None:
    """`wait_until` for a task: yields to the event loop between polls, so the awaited task runs.

    ``condition`` may be a coroutine function, to poll a store state.
    """
    deadline = time.monotonic() + timeout
    while True:
        holds = condition()
        if not isinstance(holds, bool):
            holds = await holds
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {awaiting}")
        await asyncio.sleep(_INTERVAL)
