"""A backend wrapper that cancels (or fails) the caller at a chosen store call.

`CancellingBackend` counts the calls made through it. At the planned call it
does one of:

- ``hops``: cancel the target task ``hops`` event-loop iterations after the
  call starts, while the call is in flight (or, when the call is quicker,
  just after it);
- ``after``: let the call finish (the store granted it), then cancel the
  target task and yield, so a call made from the target raises
  `asyncio.CancelledError` although its write landed;
- ``self``: let the call finish, then cancel the task running the call and
  yield (a driver that raises `CancelledError` after its command executed);
- ``fail``: let the call finish, then raise `StoreUnavailableError` (a
  connection lost after the command executed);
while ``down`` is set, every ``append`` and ``release_lease`` fails as a
store that went away does; a call named in ``gates`` waits for its event.

The wrapper records whether the cancellation fired while the run was still
being created or acquired: before its first ``append`` started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

from durable_agent.backend import Backend, LeaseOwner, RunPage
from durable_agent.errors import StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import Event, Lease, RunHeader, StoredRun

T = TypeVar("T")

Mode = Literal["hops", "after", "self", "fail"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Interrupt the ``call``-th store call (1-based) in ``mode``."""

    call: int
    mode: Mode
    hops: int = 0


class CancellingBackend(Backend):
    """Delegates to ``inner``; interrupts the caller at one planned call."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(session_id=inner.session_id, user_id=inner.user_id)
        self.inner = inner
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.plan: Plan | None = None
        self.target: asyncio.Task[object] | None = None
        self.calls = 0
        self.arming = 0
        self.fired_in: str | None = None
        """The call in flight when the cancellation fired, or "later"."""
        self.appended = False
        self.down = False
        self.gates: dict[str, asyncio.Event] = {}
        """Hold the next call of that name until its event is set (``entered`` is set then)."""
        self.entered = asyncio.Event()
        """While set, `append` and `release_lease` fail as a store that went away does."""

    def arm(self, plan: Plan | None, target: asyncio.Task[object] | None) -> None:
        self.plan, self.target = plan, target
        self.arming += 1
        self.calls, self.fired_in, self.appended = 0, None, False

    @property
    def fired_while_opening(self) -> bool:
        """The cancellation fired before the run's first append: in create or acquire."""
        return self.fired_in is not None and self.fired_in != "later"

    def _fire(self, task: asyncio.Task[object] | None, where: str) -> None:
        if task is not None and not task.done():
            self.fired_in = "later" if self.appended else where
            task.cancel()

    async def _call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.down and name in ("append", "release_lease"):
            raise StoreUnavailableError(f"the store went away (injected): {name} failed")
        gate = self.gates.pop(name, None)
        if gate is not None:  # held in flight until the test opens the gate
            self.entered.set()
            await gate.wait()
        self.calls += 1
        if name == "append":
            self.appended = True
        plan = self.plan
        if plan is None or self.calls != plan.call:
            return await call()
        self.plan = None  # one interruption per arming
        loop = asyncio.get_running_loop()
        if plan.mode == "hops":
            in_flight = [True]
            target, arming = self.target, self.arming

            def hop(left: int) -> None:
                if arming != self.arming:
                    return  # that attempt is over
                if left > 0:
                    loop.call_soon(hop, left - 1)
                else:
                    self._fire(target, name if in_flight[0] else "after " + name)

            hop(plan.hops)
            try:
                return await call()
            finally:
                in_flight[0] = False
        result = await call()
        if plan.mode == "fail":
            raise StoreUnavailableError(f"connection lost after {name} executed (injected)")
        self._fire(self.target if plan.mode == "after" else asyncio.current_task(), name)
        await asyncio.sleep(0)
        return result

    # -- the contract, delegated ---------------------------------------------------------

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        await self._call("create_run", lambda: self.inner.create_run(header, events))

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        return await self._call(
            "append",
            lambda: self.inner.append(
                run_id, events, expected_seq=expected_seq, lease=lease, release=release
            ),
        )

    async def load_run(self, run_id: str) -> StoredRun:
        return await self._call("load_run", lambda: self.inner.load_run(run_id))

    async def get_run(self, run_id: str) -> RunHeader:
        return await self._call("get_run", lambda: self.inner.get_run(run_id))

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
            session_id=session_id, user_id=user_id, states=states, created_after=created_after,
            created_before=created_before, limit=limit, cursor=cursor,
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
        return await self._call("request_cancel", lambda: self.inner.request_cancel(run_id, reason))

    async def acquire_lease(
        self, run_id: str, owner: LeaseOwner, *, ttl: float, takeover: int | None = None
    ) -> Lease:
        return await self._call(
            "acquire_lease",
            lambda: self.inner.acquire_lease(run_id, owner, ttl=ttl, takeover=takeover),
        )

    async def renew_lease(self, run_id: str, lease: Lease) -> Lease:
        return await self._call("renew_lease", lambda: self.inner.renew_lease(run_id, lease))

    async def release_lease(self, run_id: str, lease: Lease) -> None:
        await self._call("release_lease", lambda: self.inner.release_lease(run_id, lease))

    async def close(self) -> None:
        await self.inner.close()
