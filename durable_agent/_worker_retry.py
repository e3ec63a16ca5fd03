"""What a `durable_agent.worker.Worker` does besides claiming: run-level retries, hand-overs.

`RunRetry` is the optional policy for runs that failed with a retryable error
(a provider outage, a lost connection, an interruption): the worker resumes
them after a backoff, a bounded number of times. Every failure is a recorded
`FailedEvent` and every retry a recorded ``resume`` transition, so the log says
how often a run was retried and why; the attempt count is read from the log,
so it survives workers coming and going. Default off: an ERROR run stays
failed until someone continues it.

`hand_over` gives a run a stopping worker had to cut back to the fleet: the cut
left it in ERROR (the interruption is recorded, rule 7); the ``resume`` puts it
back in the state that was cut, with no lease, so another worker claims it at
once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import ConfigurationError, RunBusyError, RunNotFoundError
from durable_agent.fsm import RunState, next_state
from durable_agent.records import FailedEvent, Lease, StoredRun, TransitionEvent

__all__ = ["RunRetry", "due_retry", "hand_over", "retries_used"]


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
