"""What a `durable_agent.worker.Worker` does besides claiming: run-level retries, hand-overs.

`RunRetry` is the optional policy for runs that failed with a retryable error
(a provider outage, a lost connection, an interruption): the worker resumes
them after a backoff, a bounded number of times. Every failure is a recorded
`FailedEvent` and every retry a recorded ``resume`` transition, so the log says
how often a run was retried and why; the attempt count is read from the log,
so it survives workers coming and going. Default off: an ERROR run stays
failed until someone continues it.

`RetryScan` is the worker's pass over the ERROR runs: it walks every page of
the listing and hands back every run that is due now (up to the worker's free
slots), and the earliest time one of the others falls due, which is when an
idle worker wakes (nothing in the store announces a backoff ending).

`hand_over` gives a run a stopping worker had to cut back to the fleet: the cut
left it in ERROR (the interruption is recorded, rule 7); the ``resume`` puts it
back in the state that was cut, with no lease, so another worker claims it at
once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass
from typing import Final

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    ConfigurationError,
    DurableAgentError,
    RunBusyError,
    RunNotFoundError,
)
from durable_agent.fsm import RunState, next_state
from durable_agent.records import FailedEvent, Lease, RunHeader, StoredRun, TransitionEvent

__all__ = ["DueRetry", "RetryScan", "RunRetry", "due_retry", "hand_over", "retries_used"]

_log = logging.getLogger("durable_agent.worker")

_PAGE: Final = 100
"""ERROR runs listed per page of a walk."""
_WALK_EVERY: Final = 1.0
"""Seconds between two walks through the ERROR runs at least, unless a known backoff ends
first or the last walk stopped early: a worker on a woken store passes through its claim
loop at every change in the store, and a walk reads every ERROR run's header."""
_WALK_SHARE: Final = 0.05
"""The share of a worker's time its walks may take: after a walk of ``d`` seconds the next
waits ``d / 0.05`` at least. 10,000 ERROR runs on SQLite took ~125 ms a walk (load average
5, benchmarks/bench_retry_scan.py), so one walk every 2.5 s instead of every second."""


@dataclass(frozen=True, slots=True)
class RunRetry:
    """Resume runs that failed with a retryable error, after a backoff, at most ``attempts`` times.

    The wait before retry number *n* is ``backoff * multiplier ** (n - 1)``
    (plus up to ``jitter`` of it at random), capped at ``max_backoff``,
    counted from the failure's record. A run whose last failure is not
    retryable (a tool bug, a refused request), or that has used its attempts,
    stays in ERROR.
    """

    attempts: int = 3
    backoff: float = 5.0
    max_backoff: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"RunRetry(attempts={self.attempts!r}) must be an int")
        if self.attempts < 1:
            raise ConfigurationError(f"RunRetry(attempts={self.attempts}) must be at least 1")
        for name in ("backoff", "max_backoff", "multiplier", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"RunRetry({name}={value!r}) must be a number >= 0")

    def delay_for(self, retry: int) -> float:
        """Seconds between a failure and retry number ``retry`` (1-based)."""
        base = min(self.backoff * self.multiplier ** (retry - 1), self.max_backoff)
        return base * (1 + random.random() * self.jitter)


@dataclass(frozen=True, slots=True)
class DueRetry:
    """An ERROR run whose backoff has ended: resume it as retry number ``retry`` (1-based)."""

    header: RunHeader
    retry: int


class RetryScan:
    """Finds the ERROR runs of ``agents`` (in ``queues``; None: every queue) due for a retry.

    One scan walks every page of ``list_runs(states=[ERROR])``, so runs
    listed after a thousand foreign or spent ones are still found, and keeps
    going past runs whose backoff has not ended: each run is retried when its
    own backoff ends, whatever its place in the listing. What a run's log
    says (never retryable, or due at a time) is remembered by run id and
    ``seq``, so a run is loaded again only once it has changed; the due time,
    jitter included, is drawn once per failure.
    """

    def __init__(
        self,
        db: Backend,
        policy: RunRetry,
        *,
        agents: Collection[str],
        queues: Collection[str] | None,
        walk_every: float = _WALK_EVERY,
        walk_share: float | None = _WALK_SHARE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.policy = policy
        self.agents = frozenset(agents)
        self.queues = None if queues is None else frozenset(queues)
        self.next_due: float | None = None
        """The earliest end of a backoff the last scan saw (a timestamp), None if none."""
        self._never: dict[str, int] = {}  # run id -> seq whose log allows no retry
        self._later: dict[str, tuple[int, float, int]] = {}  # run id -> (seq, due, retry)
        self._walk_every = walk_every
        self._walk_share = walk_share
        self._clock = clock
        self._next_walk = 0.0

    async def due(
        self, *, limit: int, busy: Container[str], stopping: Callable[[], bool]
    ) -> list[DueRetry]:
        """The runs due now, at most ``limit``, leaving out ``busy`` ones; sets `next_due`.

        Walks again only when the last walk is ``walk_every`` seconds old (and
        ``1 / walk_share`` times as old as it took; None: no such rule), a
        known backoff has ended, or the last walk stopped at ``limit``; a
        listing that fails is logged and ends the walk (the next pass walks
        again). ``clock`` tells the time (a timestamp, as `due_retry` gives).
        """
        now = self._clock()
        if now < self._next_walk and (self.next_due is None or now < self.next_due):
            return []
        found: list[DueRetry] = []
        earliest: float | None = None
        seen: set[str] = set()
        cursor: str | None = None
        complete = False
        while len(found) < limit and not stopping():
            try:
                page = await self.db.list_runs(
                    states=[RunState.ERROR], limit=_PAGE, cursor=cursor
                )
            except DurableAgentError as exc:
                _log.warning("listing failed runs failed: %s", exc)
                break
            for header in page.runs:
                if len(found) >= limit or stopping():
                    break
                seen.add(header.run_id)
                if header.run_id in busy or not self._serves(header):
                    continue
                due = await self._due_at(header)
                if due is None:
                    continue
                when, retry = due
                if when <= now:
                    found.append(DueRetry(header, retry))
                elif earliest is None or when < earliest:
                    earliest = when
            cursor = page.next_cursor
            if cursor is None:
                complete = len(found) < limit and not stopping()
                break
        if complete:
            # What is no longer listed left ERROR (retried, continued, deleted).
            self._never = {k: v for k, v in self._never.items() if k in seen}
            self._later = {k: v for k, v in self._later.items() if k in seen}
        self.next_due = earliest
        gap = self._walk_every
        if self._walk_share is not None:
            gap = max(gap, (self._clock() - now) / self._walk_share)
        self._next_walk = now + gap if complete else now
        return found

    def _serves(self, header: RunHeader) -> bool:
        return header.agent_name in self.agents and (
            self.queues is None or header.queue in self.queues
        )

    async def _due_at(self, header: RunHeader) -> tuple[float, int] | None:
        """(due time, retry number) of a listed ERROR run, or None if it is not to be retried."""
        run_id = header.run_id
        if self._never.get(run_id) == header.seq:
            return None
        known = self._later.get(run_id)
        if known is not None and known[0] == header.seq:
            return known[1], known[2]
        try:
            stored = await self.db.load_run(run_id)
        except DurableAgentError:
            return None  # gone, or unreadable: the next walk looks again
        seq = stored.header.seq
        due = due_retry(stored, self.policy)
        if due is None:
            self._never[run_id] = seq
            self._later.pop(run_id, None)
            return None
        retry = retries_used(stored) + 1
        self._later[run_id] = (seq, due, retry)
        return due, retry


def due_retry(stored: StoredRun, policy: RunRetry, *, now: float | None = None) -> float | None:
    """When the ERROR run ``stored`` may be retried (a timestamp), or None if it never may.

    The retries used are the recorded failures before the last one (each was
    followed by a ``resume``); the last failure must be retryable.
    """
    if stored.header.state is not RunState.ERROR or not stored.events:
        return None
    last = stored.events[-1]
    if not isinstance(last, FailedEvent) or not last.error.retryable:
        return None
    used = retries_used(stored)
    if used >= policy.attempts:
        return None
    due = last.at.timestamp() + policy.delay_for(used + 1)
    return due if now is None else max(due, now)


def retries_used(stored: StoredRun) -> int:
    """Run-level retries the ERROR run ``stored`` had: its recorded failures before the last."""
    return sum(1 for e in stored.events if isinstance(e, FailedEvent)) - 1


async def hand_over(
    backend: Backend,
    run_id: str,
    owner: LeaseOwner,
    ttl: float,
    *,
    requested_by: str | None = None,
) -> bool:
    """Put an ERROR run back where it failed, unleased, for a worker; return whether it did.

    Appends the ``resume`` transition (recording ``requested_by``, who asked
    for it, when a person did) and releases the lease in one write. A run that
    is not in ERROR (it came to rest by itself), or that another process
    holds, is left alone.
    """
    try:
        lease: Lease | None = await backend.acquire_lease(run_id, owner, ttl=ttl)
    except (RunBusyError, RunNotFoundError):
        return False
    assert lease is not None
    try:
        stored = await backend.load_run(run_id)
        failed = stored.events[-1] if stored.events else None
        if stored.header.state is not RunState.ERROR or not isinstance(failed, FailedEvent):
            return False
        seq = stored.header.seq
        state = next_state(RunState.ERROR, "resume", failed_state=failed.failed_state)
        event = TransitionEvent(
            seq=seq + 1, state=state, trigger="resume", requested_by=requested_by
        )
        held, lease = lease, None
        await backend.append(run_id, [event], expected_seq=seq, lease=held, release=True)
        return True
    finally:
        if lease is not None:
            await backend.release_lease(run_id, lease)
