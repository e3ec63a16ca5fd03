"""`KillSwitchBackend`: SIGKILL this process right after a chosen durable write.

Crash tests and the demo wrap a real backend with it, so a process dies at an
exact transition (a deterministic hook, not a random sleep) and another
process resumes the run from what the store holds.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection, Sequence
from datetime import datetime

from durable_agent.backend import Backend, Capability, LeaseOwner, RunPage
from durable_agent.fsm import RunState
from durable_agent.records import Event, Lease, RunHeader, StoredRun

__all__ = ["KillSwitchBackend"]


class KillSwitchBackend(Backend):
    """Delegates to ``inner``; SIGKILLs the process after write number ``kill_after``.

    Writes are counted from 1: `create_run` and each `append`, in order, after
    the inner store returned (so the write is durable). ``kill_after=None``
    never kills; ``writes`` counts them either way, which is how a test learns
    how many kill points an uninterrupted run has.
    """

    capabilities = Backend.capabilities | {Capability.DURABLE, Capability.CROSS_PROCESS}
    """Claimed for the inner store; wrap only stores that have them."""

    def __init__(self, inner: Backend, *, kill_after: int | None = None) -> None:
        super().__init__(session_id=inner.session_id, user_id=inner.user_id)
        self.inner = inner
        self.kill_after = kill_after
        self.writes = 0

    def _wrote(self) -> None:
        self.writes += 1
        if self.kill_after is not None and self.writes >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        await self.inner.create_run(header, events)
        self._wrote()

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        renewed = await self.inner.append(
            run_id, events, expected_seq=expected_seq, lease=lease, release=release
        )
        self._wrote()
        return renewed

    async def load_run(self, run_id: str) -> StoredRun:
        return await self.inner.load_run(run_id)

    async def get_run(self, run_id: str) -> RunHeader:
        return await self.inner.get_run(run_id)

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        states: Collection[RunState] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        return await self.inner.list_runs(
            session_id=session_id,
            user_id=user_id,
            states=states,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )

    async def delete_run(self, run_id: str) -> bool:
        return await self.inner.delete_run(run_id)

    async def prune(
        self,
        *,
        older_than: datetime,
        states: Collection[RunState] = (RunState.DONE, RunState.CANCELLED),
    ) -> int:
        return await self.inner.prune(older_than=older_than, states=states)

    async def request_cancel(self, run_id: str, reason: str) -> RunHeader:
        return await self.inner.request_cancel(run_id, reason)

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        return await self.inner.acquire_lease(run_id, owner, ttl=ttl, takeover=takeover)

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        return await self.inner.renew_lease(run_id, lease)

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        await self.inner.release_lease(run_id, lease)

    async def close(self) -> None:
        await self.inner.close()
