"""Forking a run: a new run whose log is a prefix of another's.

`create_fork` copies a stored run's events ``1 … at_seq`` into a new run, with
the first event marked `CreatedEvent.forked_from`, and stores it with one
`Backend.create_run` (the prefix keeps its seqs, so no backend needs a new
method). The source is only read: its log is append-only, so a prefix never
changes, whichever process is writing the source meanwhile.

Continuing the fork is continuing any run (`Agent.continue_run_async`): the
prefix's recorded model answers and tool results are replayed, never redone
(rule 3). A fork point inside an ambiguous window (a tool intent with no result
at ``at_seq``) is an in-doubt call of the fork, handled by rule 4: an
idempotent tool runs again, a ``idempotent=False`` one makes the fork WAITING.
The fork is a different run, so its idempotency keys are its own
(``<fork id>:<seq>:<call id>``): a service that deduplicates by key performs a
call the fork runs again even if the source's call landed. See docs/forking.md.
"""

from __future__ import annotations

import uuid

from durable_agent._names import check_new_run_id
from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError, RunExistsError
from durable_agent.records import CancelledEvent, CreatedEvent, Event, ForkOrigin, RunHeader

__all__ = ["create_fork", "fork_origin"]


def fork_origin(events: tuple[Event, ...] | list[Event]) -> ForkOrigin | None:
    """Where a run was forked from (its first event says), or None for an original run."""
    if events and isinstance(events[0], CreatedEvent):
        return events[0].forked_from
    return None


async def create_fork(
    backend: Backend,
    run_id: str,
    *,
    at_seq: int,
    new_run_id: str | None = None,
    agent_name: str | None = None,
) -> RunHeader:
    """Store a fork of ``run_id`` holding its events up to ``at_seq``; return its header.

    The fork has no lease (like an imported run): any continue takes it.
    ``agent_name`` defaults to the source's. Raises `RunNotFoundError` for an
    unknown source, `ConfigurationError` for an ``at_seq`` outside the source's
    log or at its cancellation or a ``new_run_id`` a store could not keep
    intact, and `RunExistsError` when ``new_run_id`` is taken.
    """
    if isinstance(at_seq, bool) or not isinstance(at_seq, int):
        raise ConfigurationError(
            f"fork of run {run_id!r}: at_seq must be an int (an event's seq), got {at_seq!r}"
        )
    fork_id = new_run_id if new_run_id is not None else uuid.uuid4().hex
    check_new_run_id(fork_id, "fork(new_run_id=...)")  # a fork is always a new run
    stored = await backend.load_run(run_id)
    last = stored.header.seq
    if not 1 <= at_seq <= last:
        raise ConfigurationError(
            f"cannot fork run {run_id!r} at seq {at_seq}: its events are seq 1 to {last}; "
            f"pick one of those (durable-agent runs show {run_id} lists them)"
        )
    prefix = list(stored.events[:at_seq])
    if isinstance(prefix[-1], CancelledEvent):
        raise ConfigurationError(
            f"cannot fork run {run_id!r} at seq {at_seq}: that event cancelled it, and a "
            f"cancelled run cannot go on; fork at seq {at_seq - 1} to continue from before"
        )
    first = prefix[0]
    if not isinstance(first, CreatedEvent):  # a log the engine could not have written
        raise ConfigurationError(f"run {run_id!r} does not start with its created event")
    prefix[0] = first.model_copy(
        update={"forked_from": ForkOrigin(run_id=run_id, seq=at_seq)}
    )
    source = stored.header
    header = RunHeader(
        run_id=fork_id,
        session_id=source.session_id,
        user_id=source.user_id,
        agent_name=agent_name or source.agent_name,
        state=prefix[-1].state,
        seq=at_seq,
    )
    try:
        await backend.create_run(header, prefix)
    except RunExistsError as exc:
        exc.args = (
            f"cannot fork run {run_id!r} as {fork_id!r}: that run id is taken; pass another "
            "new_run_id, or none for a random one",
        )
        raise
    return header
