"""`LeaseWatcher`: reads a store from a thread of its own and keeps a queue's most live leases.

The tests of ``max_running`` across processes run it beside the workers: it
samples the store every few milliseconds (a sampling interval, not a barrier)
and so catches an overlap that lasts; a test that must not miss a short one
also checks the store itself at the moment it matters.
"""

from __future__ import annotations

import asyncio
import threading
import time

from durable_agent.backend import Backend
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader
from durable_agent.registry import open_backend
from tests._barriers import DEADLINE, wait_until

_MOVING = [RunState.PENDING, RunState.MODEL_CALL, RunState.TOOL_EXEC]


async def moving(backend: Backend) -> list[RunHeader]:
    """The headers of every run not at rest."""
    found: list[RunHeader] = []
    cursor: str | None = None
    while True:
        page = await backend.list_runs(states=_MOVING, limit=500, cursor=cursor)
        found.extend(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            return found


def live_in(headers: list[RunHeader], queue: str) -> list[RunHeader]:
    """The runs of ``queue`` among ``headers`` holding a lease unexpired by this machine's clock.

    Every store of these tests runs on this machine, so its clock is the store's.
    """
    now = time.time()
    return [h for h in headers if h.queue == queue and h.lease is not None
            and h.lease.expires_at > now]


class LeaseWatcher:
    """Reads the store in a thread of its own until stopped; keeps the most live leases seen."""

    def __init__(self, url: str, queue: str) -> None:
        self.url, self.queue = url, queue
        self.most = 0
        self.reads = 0
        self.begun = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    def __enter__(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE)

    def read_from_now(self) -> None:
        """Return once a read that began after this call has ended (a barrier, with a deadline).

        Called while a lease surely stays live, it makes ``most`` count that lease
        however slowly the watcher's thread runs on a loaded machine.
        """
        target = self.begun + 1
        wait_until(lambda: self.reads >= target, awaiting="a read of the lease watcher")

    async def _watch(self) -> None:
        backend = open_backend(self.url)
        async with backend:
            while not self._stop.is_set():
                self.begun += 1
                live = live_in(await moving(backend), self.queue)
                self.most = max(self.most, len(live))
                self.reads += 1
                await asyncio.sleep(0.02)  # a sampling interval, not a barrier
