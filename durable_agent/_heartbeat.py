"""One lease heartbeat per event loop, for the executions that are inside an effect.

An append renews the run's lease, so a lease needs renewing only while one
effect (a model call, the tool calls of a turn, a reconcile) outlasts a third
of its TTL (DESIGN.md §3 rule 5). An execution entering an effect is *held*
by its loop's `Beat` with the time its lease is due (a third of the TTL from
now); one timer per loop, armed at the earliest due time, renews the held
leases that are due then (or within a twelfth of their TTL, so renewals that
fall close together share one wake-up) and re-arms itself. Leaving the effect
waits for a renewal still in flight, so no renewal lands after the write that
follows the effect. A beat with nothing held goes idle (its timer cancelled)
at the end of the loop iteration in which its last execution left.

No reference cycles, by construction: the callbacks are module functions and
their arguments are the loop, the due time and the beat (which holds no
handle); a beat holds executions only while they are inside an effect, never
the loop; a renewal task is dropped by its own ``finally``. So ending an effect
frees everything by reference counting: with a thousand concurrent runs, the
cyclic collector's passes over them cost more than the rest of a transition
(benchmark b; tests/engine/test_no_cycles.py guards this).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from durable_agent._recording import ExecutionCore

__all__ = ["Beat", "Effect"]

_BEATS: dict[asyncio.AbstractEventLoop, Beat] = {}
"""The beat of each loop that has an execution inside an effect; removed when it has none."""


class Beat:
    """The executions of one event loop inside an effect, with the time each lease is due."""

    __slots__ = ("due", "held", "renewing", "settling", "timer")

    def __init__(self) -> None:
        self.held: dict[ExecutionCore, float] = {}
        """Execution -> loop time by which its lease must be renewed."""
        self.renewing: dict[ExecutionCore, asyncio.Task[None]] = {}
        self.due = math.inf
        """When ``timer`` fires; a timer armed for another time is superseded and does nothing."""
        self.timer: asyncio.TimerHandle | None = None
        self.settling = False
        """An idle check is scheduled for the end of this loop iteration."""

    def arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.due = when
        self.timer = loop.call_at(when, _tick, loop, when)

    def idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget this loop's beat once nothing is held or renewing (no timer stays armed)."""
        if self.held or self.renewing:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.due = math.inf
        if _BEATS.get(loop) is self:
            del _BEATS[loop]


def _tick(loop: asyncio.AbstractEventLoop, when: float) -> None:
    beat = _BEATS.get(loop)
    if beat is None or beat.due != when:
        return  # superseded by an earlier timer, or the beat went idle
    beat.timer = None
    beat.due = math.inf
    now = loop.time()
    following = math.inf
    for core, due in beat.held.items():
        lease = core.lease
        if lease is None:
            continue
        if due <= now + lease.ttl / 12 and core not in beat.renewing:
            beat.renewing[core] = loop.create_task(_renewal(loop, beat, core))
            due = now + lease.ttl / 3
            beat.held[core] = due  # a value, not a key: safe while iterating
        following = min(following, due)
    if following < math.inf:
        beat.arm(loop, following)


def _settle(loop: asyncio.AbstractEventLoop, beat: Beat) -> None:
    beat.settling = False
    beat.idle(loop)


async def _renewal(loop: asyncio.AbstractEventLoop, beat: Beat, core: ExecutionCore) -> None:
    try:
        await core._renew()
    finally:
        del beat.renewing[core]
        if core not in beat.held:
            beat.idle(loop)


class _Done:
    """An awaitable that is already done: ``Effect`` returns it instead of a coroutine."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return cast("Generator[None, None, None]", _EXHAUSTED)


_EXHAUSTED = iter(())
_DONE = _Done()


class Effect:
    """``async with core._keepalive()``: the execution is held by its loop's beat meanwhile.

    Entering and leaving are plain methods that return an awaitable (done, or
    the renewal to wait for): no coroutine per effect. A beat whose last
    execution leaves goes idle at the end of that loop iteration, not at once,
    so the effects of one iteration (the runs a group commit woke) share one
    timer instead of arming and cancelling one each.
    """

    __slots__ = ("_beat", "_core", "_loop")

    def __init__(self, core: ExecutionCore) -> None:
        self._core = core
        self._beat: Beat | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __aenter__(self) -> Awaitable[None]:
        core = self._core
        lease = core.lease
        assert lease is not None
        loop = asyncio.get_running_loop()
        beat = _BEATS.get(loop)
        if beat is None:
            beat = _BEATS[loop] = Beat()
        elif core in beat.held:
            return _DONE  # already held by an enclosing effect, which lets go of it
        due = loop.time() + lease.ttl / 3
        beat.held[core] = due
        self._beat, self._loop = beat, loop
        if due < beat.due:
            beat.arm(loop, due)
        return _DONE

    def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> Awaitable[None]:
        beat, loop = self._beat, self._loop
        if beat is None or loop is None:
            return _DONE
        self._beat = self._loop = None
        core = self._core
        del beat.held[core]
        renewal = beat.renewing.get(core)
        if renewal is not None:
            # Awaited by the caller, so it never lands after the write that
            # follows this effect; when it ends it lets the beat go idle.
            return renewal
        if not beat.held and not beat.settling:
            beat.settling = True
            loop.call_soon(_settle, loop, beat)
        return _DONE
