"""`follow`: a run's stored events as they land, from any process that can open its store.

```python
async for event in follow(store, run_id, after_seq=last_seq):
    if not event.ephemeral:
        last_seq = event.seq   # reconnect from here: nothing missed, nothing twice
```

It yields every stored record after ``after_seq`` exactly once, in ``seq``
order (as `durable_agent.streaming.StoredEvent` subclasses), and ends when the
run comes to rest (DONE, CANCELLED or ERROR: `Finished`; WAITING: `Paused`).

How it learns of new events: every store supports the portable path, a poll
of the run's header (one small read) that loads the events only when the
``seq`` moved, with backoff from ``poll`` to ``max_poll`` seconds while
nothing happens. A store with `Capability.RELAY` (Redis, PostgreSQL) also relays what the
process streaming the run publishes: token deltas of the call in flight
(`TextDelta` and friends, ``ephemeral=True``, best effort: a follower that
connects mid-answer sees the rest of it only, and a lost message is not sent
again) and a note after each append, which turns the wait into a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

from durable_agent.backend import Backend, Capability
from durable_agent.errors import ConfigurationError
from durable_agent.fsm import RunState
from durable_agent.records import ModelResponseEvent
from durable_agent.run import RunContext, RunOutput
from durable_agent.streaming import (
    Finished,
    ModelCallStarted,
    Paused,
    StreamEvent,
    TextDelta,
    TextDiscarded,
    stored_event,
)

__all__ = ["follow"]

# How long a follower waits for its own mark on the relay (see `_catch_up`).
_MARK_WAIT = 2.0

_AT_REST = frozenset({RunState.DONE, RunState.CANCELLED, RunState.ERROR, RunState.WAITING})


async def follow(
    backend: Backend,
    run_id: str,
    *,
    after_seq: int = 0,
    poll: float = 0.05,
    max_poll: float = 1.0,
    relay: bool = True,
) -> AsyncIterator[StreamEvent]:
    """Yield ``run_id``'s stored events after ``after_seq`` as they land; end at rest.

    ``relay=False`` ignores the store's relay of deltas even where it has one.
    Raises `RunNotFoundError` for an unknown run. A run that is already at
    rest yields its events after ``after_seq`` and its end at once.
    """
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise ConfigurationError(f"follow(after_seq=...) must be an int >= 0, got {after_seq!r}")
    if not 0 < poll <= max_poll:
        raise ConfigurationError("follow() needs 0 < poll <= max_poll (seconds)")
    subscription = (
        backend.subscribe_ephemeral(run_id)
        if relay and Capability.RELAY in backend.capabilities
        else None
    )
    async with subscription if subscription is not None else _nothing() as messages:
        wakeups: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        reader = (
            asyncio.get_running_loop().create_task(_read(messages, wakeups))
            if messages is not None
            else None
        )
        try:
            async for event in _follow(
                backend, run_id, after_seq, poll, max_poll, wakeups, reader is not None
            ):
                yield event
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader


async def _follow(
    backend: Backend,
    run_id: str,
    seq: int,
    poll: float,
    max_poll: float,
    wakeups: asyncio.Queue[dict[str, object]],
    relayed: bool,
) -> AsyncIterator[StreamEvent]:
    delay = poll
    known = -1  # the header seq last seen; -1 forces the first load
    noted = False  # a note that something was stored came while catching up
    while True:
        header = await backend.get_run(run_id)
        rest = header.state in _AT_REST and header.lease is None
        if header.seq != known or rest:
            stored = await backend.load_run(run_id)
            header, events = stored.header, stored.events
            known = header.seq
            if seq > header.seq:  # logs only grow: this seq was never stored
                raise ConfigurationError(
                    f"follow(after_seq={seq}): run {run_id!r} has {header.seq} events; pass "
                    "the seq of an event it has (0 for all)"
                )
            previous = events[seq - 1].state if 0 < seq <= len(events) else RunState.PENDING
            fresh = events[seq:]
            if relayed and any(isinstance(r, ModelResponseEvent) for r in fresh):
                # Deltas of the answer about to be yielded may still be on their way.
                caught, noted = await _catch_up(backend, run_id, wakeups)
                for relayed_event in caught:
                    yield relayed_event
            for record in fresh:
                yield stored_event(record, previous)
                previous, seq = record.state, record.seq
                delay = poll
            if header.state in _AT_REST and header.lease is None and header.seq == seq:
                output = RunOutput.from_context(RunContext.from_stored(stored))
                yield Paused(output) if header.state is RunState.WAITING else Finished(output)
                return
        if noted:  # read the log again now: the note it held was taken by `_catch_up`
            noted = False
            continue
        # Wait for a relayed message (a delta, or a note that something was stored)
        # or the next poll, whichever comes first.
        try:
            message = await asyncio.wait_for(wakeups.get(), delay)
        except TimeoutError:
            delay = min(delay * 2, max_poll)
            continue
        while True:
            event = _ephemeral(message)
            if event is not None:
                yield event
            if message.get("kind") == "stored" or wakeups.empty():
                break
            message = wakeups.get_nowait()


async def _catch_up(
    backend: Backend, run_id: str, wakeups: asyncio.Queue[dict[str, object]]
) -> tuple[list[StreamEvent], bool]:
    """The relayed events published before now, and whether a stored note was among them.

    A mark of our own is sent, and awaited.

    The streaming process publishes a call's last deltas before it appends the
    answer, and this runs after the answer was read: where the store relays in
    the order it executes (one Redis server; PostgreSQL delivers in commit
    order), the mark arrives after every delta of that answer. A mark that never
    comes (the relay failed or dropped it) costs at most `_MARK_WAIT` seconds.
    """
    token = uuid.uuid4().hex
    try:
        await backend.publish_ephemeral(run_id, json.dumps({"kind": "mark", "token": token}))
    except Exception:
        return [], False
    events: list[StreamEvent] = []
    noted = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_MARK_WAIT):
            while (message := await wakeups.get()).get("token") != token:
                if (event := _ephemeral(message)) is not None:
                    events.append(event)
                noted = noted or message.get("kind") == "stored"
    return events, noted


def _ephemeral(message: dict[str, object]) -> StreamEvent | None:
    kind = message.get("kind")
    attempt = message.get("attempt")
    attempt = attempt if isinstance(attempt, int) else 1
    if kind == "text_delta" and isinstance(text := message.get("text"), str):
        return TextDelta(text, attempt)
    if kind == "model_call_started":
        return ModelCallStarted(attempt, repeat=bool(message.get("repeat")))
    if kind == "text_discarded":
        return TextDiscarded(str(message.get("text", "")), str(message.get("reason", "")), attempt)
    return None


async def _read(messages: AsyncIterator[str], wakeups: asyncio.Queue[dict[str, object]]) -> None:
    async for batch in messages:
        for line in batch.splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    wakeups.put_nowait(value)


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield None
