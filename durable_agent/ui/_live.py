"""A run page's live updates: the run's stored events as server-sent events, over `follow`.

    GET /events/run?id=ID&after=N        (Last-Event-ID: N on a reconnect)

Each message is one batch of stored events, as they land::

    id: 7
    event: run
    data: {"seq": 7, "state": "TOOL_EXEC", "events": [{...}, {...}], "html": "…"}

``id`` is the seq of the batch's last event, so a browser that reconnects
(EventSource sends ``Last-Event-ID`` by itself) resumes right after what it
applied: it misses nothing and sees nothing twice (`follow`'s promise).
``events`` are the records exactly as stored (what ``runs show --json``
lists); ``html`` is the run's body rendered by the page's templates (Jinja2
autoescape: stored text is untrusted, it shows as text), so the script never
builds markup from stored strings. Events that land together are sent as one
batch with one rendering, so a burst costs one page render, not one per event.

The stream ends with ``event: end`` when the run comes to rest (DONE, ERROR,
WAITING, CANCELLED, lease released): a page of a resting run holds no
connection, since a browser allows only six per server and each open tab
would keep one. A comment every ``KEEP_ALIVE`` seconds keeps proxies from
closing a quiet stream and lets the server notice a client that went away.
The ephemeral deltas `follow` can relay are not sent: the page shows stored
events only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Final

from durable_agent import _inspect as inspect
from durable_agent._follow import follow
from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError, DurableAgentError
from durable_agent.streaming import Finished, Paused, StoredEvent

__all__ = ["KEEP_ALIVE", "after_seq", "run_events"]

KEEP_ALIVE: Final = 15.0
_RETRY_MS: Final = 1000
"""How long a browser waits before reconnecting a stream that broke."""

_End = Finished | Paused


def after_seq(last_event_id: str | None, after: str | None) -> int:
    """Where a stream starts: after ``Last-Event-ID`` (a reconnect), else ``?after=``, else 0."""
    text = last_event_id if last_event_id else after
    if not text:
        return 0
    if not text.isdigit():
        raise ConfigurationError(
            f"the stream starts after an event's seq (an integer >= 0), got {text[:40]!r}"
        )
    return int(text)


def _message(event: str, data: object, *, seq: int | None = None) -> str:
    # json.dumps escapes every newline, so the data is one `data:` line.
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def run_events(
    backend: Backend,
    run_id: str,
    after: int,
    *,
    render: Callable[[inspect.RunView], str],
    max_poll: float,
) -> AsyncIterator[str]:
    """The SSE text of run ``run_id``'s stored events after seq ``after``, until it rests."""
    found: asyncio.Queue[StoredEvent | _End | BaseException] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for event in follow(
                backend, run_id, after_seq=after, max_poll=max(max_poll, 0.05), relay=False
            ):
                if isinstance(event, StoredEvent | Finished | Paused):
                    found.put_nowait(event)
        except Exception as exc:  # told to the page, then the stream ends
            found.put_nowait(exc)

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        yield f"retry: {_RETRY_MS}\n\n"
        while True:
            try:
                first = await asyncio.wait_for(found.get(), KEEP_ALIVE)
            except TimeoutError:
                yield ": still following\n\n"
                continue
            batch = [first]
            while not found.empty():
                batch.append(found.get_nowait())
            stored = [e for e in batch if isinstance(e, StoredEvent)]
            if stored:
                view = inspect.inspect_run(await backend.load_run(run_id))
                data = {
                    "seq": stored[-1].seq,
                    "state": stored[-1].state.value,
                    "events": [inspect.event_data(e.record) for e in stored],
                    "html": render(view),
                }
                yield _message("run", data, seq=stored[-1].seq)
            for item in batch:
                if isinstance(item, BaseException):
                    why = str(item) if isinstance(item, DurableAgentError) else type(item).__name__
                    yield _message("failed", {"error": why})
                    return
                if isinstance(item, Finished | Paused):
                    yield _message("end", {"state": item.output.state.value})
                    return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
