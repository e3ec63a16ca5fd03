"""`JsonFileBackend`'s claim: the portable one, taken in turns under a folder-wide flock.

Every claim, in any process of the machine, first takes an exclusive
``flock`` on ``<folder>/.claims.lock``, then lists the runs not at rest,
counts each queue's live leases and acquires (each acquisition is still the
run's own compare-and-set on the lease generation, under the run's log lock).
Claims thus never interleave: ``max_running`` holds across every process
sharing the folder, as it would in one atomic step, and two claimers never
both get a run. The lock is held for the claim only, never across an
append, so it costs appends nothing; it is released by the kernel when its
holder dies, so a SIGKILLed claimer blocks no one.

Leases taken outside claims (`JsonFileBackend.acquire_lease`, which
`Agent.continue_run_async` uses) do not wait for the lock: the cap governs
what workers claim, and a run continued by hand is counted by the next claim.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

from durable_agent.backend import ClaimedRun, LeaseOwner, portable_claim
from durable_agent.backends._jsonfile_folder import CLAIM_LOCK

if TYPE_CHECKING:
    from durable_agent.backends.jsonfile import JsonFileBackend

__all__ = ["LOCK_NAME", "claim"]

LOCK_NAME: Final = CLAIM_LOCK
"""The folder-wide claim lock; never a run (run ids may not start with '.')."""

_FIRST_WAIT: Final = 0.002
_LONGEST_WAIT: Final = 0.05
"""Seconds between tries of a busy lock: claims take milliseconds, and a waiter polls
(LOCK_NB) rather than block a thread, so a cancelled claim leaves no thread behind that
would take the lock later and never give it back."""


async def claim(
    backend: JsonFileBackend,
    owner: LeaseOwner,
    *,
    agents: Collection[str],
    queues: Collection[str] | None,
    limit: int,
    ttl: float,
    max_running: Mapping[str, int] | None,
) -> list[ClaimedRun]:
    """`portable_claim` while holding the folder's claim lock."""
    async with _claim_lock(backend):
        return await portable_claim(
            backend, owner, agents=agents, queues=queues, limit=limit, ttl=ttl,
            max_running=max_running,
        )


@asynccontextmanager
async def _claim_lock(backend: JsonFileBackend) -> AsyncIterator[None]:
    fd = await backend._run(_open_lock)
    try:
        wait = _FIRST_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(wait)
                wait = min(wait * 2, _LONGEST_WAIT)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its flock


def _open_lock(root: str) -> int:
    os.makedirs(root, exist_ok=True)
    return os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
