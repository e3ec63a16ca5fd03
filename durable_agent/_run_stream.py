"""`RunStream`: one run driven in a task of its own, its events handed to the consumer.

The run is driven exactly as ``do_async`` / ``continue_run_async`` drive it;
the only differences are that each model call goes through the model's
`ChatModel.stream` and that every event reaches a queue. The engine hands
them over through `durable_agent._stream_hooks` (a sink set in the driving
task's context); the sink never writes to the store, so what is recorded, and
when, is what an unstreamed run records (DESIGN.md §7: deltas are not stored,
the assistant message is appended complete, with its usage).

The queue is unbounded: a slow consumer never slows the run and never loses
an event; what it has not read yet waits in memory (at most the run's events
plus the text of the answers in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from durable_agent._stream_hooks import SINK
from durable_agent.backend import Backend, Capability
from durable_agent.errors import ConfigurationError, ModelResponseError, RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.models import ChatModel, ModelDelta, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.records import Event, Message
from durable_agent.run import RunOutput
from durable_agent.streaming import (
    Finished,
    ModelCallStarted,
    Paused,
    StoredEvent,
    StreamEvent,
    TextDelta,
    TextDiscarded,
    stored_event,
)
from durable_agent.telemetry._hook import CURRENT_CHAT

if TYPE_CHECKING:
    from durable_agent.agent import Agent
    from durable_agent.human import DecisionRequest
    from durable_agent.task import Task

__all__ = ["RunStream", "relay_message", "stream_continue", "stream_new"]

_REPEAT_REASON = (
    "the run resumed in this model call: an earlier process may have streamed an answer "
    "that was never recorded; it is asked again"
)


class _End:
    """The run's task is over: ``error`` is what it raised, if anything."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Sink:
    """What the engine calls for the streamed run (see `durable_agent._stream_hooks`)."""

    def __init__(
        self,
        run_id: str,
        queue: asyncio.Queue[StreamEvent | _End],
        backend: Backend,
        state: RunState | None,
    ) -> None:
        self.run_id = run_id
        self._put = queue.put_nowait
        self._state = state or RunState.PENDING
        self._relay = _Relay(backend, run_id) if Capability.RELAY in backend.capabilities else None

    def expect(self, state: RunState) -> None:
        """The run's state before the first event this sink will see."""
        self._state = state

    def recorded(self, events: Sequence[Event]) -> None:
        for record in events:
            self._put(stored_event(record, self._state))
            self._state = record.state
        if self._relay is not None:
            self._relay.send({"kind": "stored", "seq": events[-1].seq})

    async def model_call(
        self,
        model: ChatModel,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
        attempt: int,
        repeated: bool,
    ) -> ModelResponse:
        self._ephemeral(ModelCallStarted(attempt, repeat=repeated))
        if repeated and attempt == 1:
            self._ephemeral(TextDiscarded("", _REPEAT_REASON, attempt))
        shown: list[str] = []
        response: ModelResponse | None = None
        put = self._put
        relay = self._relay
        chat = CURRENT_CHAT.get()  # the attempt's telemetry, None when nothing records it
        try:
            stream = model.stream(messages, tools=tools, output_schema=output_schema)
            try:
                async for item in stream:
                    if isinstance(item, ModelDelta):
                        if item.text:
                            shown.append(item.text)
                            delta = TextDelta(item.text, attempt)
                            put(delta)
                            if chat is not None:
                                chat.chunk(item.text)
                            if relay is not None:
                                relay.send(delta.as_json())
                            # Let the consumer run: a stream whose bytes are already
                            # buffered never suspends, and would hand every delta over
                            # at once, after the last (measured: +40 ms to the first).
                            await asyncio.sleep(0)
                    else:
                        response = item
            finally:
                # An async generator left early (a cancellation) closes its HTTP stream now.
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
        except BaseException as exc:
            if shown:
                self._ephemeral(
                    TextDiscarded(
                        "".join(shown),
                        f"attempt {attempt} failed mid-stream ({type(exc).__name__}); "
                        "nothing of it is recorded",
                        attempt,
                    )
                )
            raise
        if response is None:
            raise ModelResponseError(
                f"model {model.name!r} ended its stream without an answer; retryable",
                retryable=True,
            )
        if relay is not None:
            # The answer is appended once this returns: every delta is published
            # first, so a store that orders the two (one Redis server, PostgreSQL's
            # commit order) hands a subscribed follower each delta before the answer.
            await relay.drain()
        return response

    def _ephemeral(self, event: ModelCallStarted | TextDiscarded) -> None:
        self._put(event)
        if self._relay is not None:
            self._relay.send(event.as_json())


def relay_message(payload: Mapping[str, object]) -> str:
    """The text a relayed ephemeral event travels as (one JSON object)."""
    return json.dumps(payload, separators=(",", ":"))


class _Relay:
    """Publishes ephemeral events to followers in other processes, best effort.

    One publisher task at a time drains what accumulated, so a fast stream
    costs one publish per batch, never a wait in the model call; a failed
    publish is dropped (followers still get every stored event by polling).
    """

    def __init__(self, backend: Backend, run_id: str) -> None:
        self._backend = backend
        self._run_id = run_id
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def send(self, payload: Mapping[str, object]) -> None:
        self._pending.append(relay_message(payload))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            with contextlib.suppress(Exception):
                await self._backend.publish_ephemeral(self._run_id, "\n".join(batch))

    async def drain(self) -> None:
        """Wait for what is queued to be published (before an answer is stored; at the end)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await task


async def _drive(
    start: Callable[[], Awaitable[RunOutput]],
    sink: _Sink,
    queue: asyncio.Queue[StreamEvent | _End],
) -> None:
    # A function, not a method: the task must not keep the `RunStream` alive,
    # so a stream dropped mid-run is collected and cancels the run (`__del__`).
    SINK.set(sink)
    try:
        output = await start()
    except BaseException as exc:
        queue.put_nowait(_End(exc))
        if not isinstance(exc, Exception):
            raise
        return
    finally:
        if sink._relay is not None:
            await sink._relay.drain()
    queue.put_nowait(Paused(output) if output.state is RunState.WAITING else Finished(output))
    queue.put_nowait(_End(None))


class RunStream:
    """A run's events as they happen: ``async for event in stream`` (see `durable_agent.streaming`).

    Nothing runs until the stream is entered (``async with``) or iterated. It
    ends after `Finished` or `Paused`; a failure raises what ``do_async``
    raises (after the stored failure was yielded). Leaving ``async with`` (or
    `aclose`) before the end cancels the run, which records the interruption
    as an outer cancellation does (ERROR, resumable); so does dropping a stream
    that is still running.
    """

    def __init__(
        self,
        run_id: str,
        backend: Backend,
        start: Callable[[], Awaitable[RunOutput]],
        *,
        state: RunState | None = None,
    ) -> None:
        self.run_id = run_id
        """The run's id, known before anything is written."""
        self.output: RunOutput | None = None
        """The run's outcome once the stream ended (`Finished` / `Paused`)."""
        self.last_seq = 0
        """The seq of the last stored event yielded: reconnect with ``follow(after_seq=...)``."""
        self._queue: asyncio.Queue[StreamEvent | _End] = asyncio.Queue()
        self._sink = _Sink(run_id, self._queue, backend, state)
        self._start = start
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    def _begin(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                _drive(self._start, self._sink, self._queue),
                name=f"durable-agent stream {self.run_id}",
            )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._ended:
            raise StopAsyncIteration
        self._begin()
        item = await self._queue.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if isinstance(item, StoredEvent):
            self.last_seq = item.seq
        elif isinstance(item, Finished | Paused):
            self.output = item.output
        return item

    async def aclose(self) -> None:
        """Stop: cancel the run if it is still going (the interruption is recorded) and wait."""
        self._ended = True
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        if not task.done():  # we were cancelled ourselves while waiting
            raise asyncio.CancelledError

    async def __aenter__(self) -> Self:
        self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        task = self._task
        if task is not None and not task.done():
            # Once its loop is closed the task is gone with it: nothing to cancel.
            with contextlib.suppress(RuntimeError):
                task.cancel()

    async def until_done(self) -> RunOutput:
        """Consume the rest of the stream and return the run's outcome."""
        async for _ in self:
            pass
        assert self.output is not None
        return self.output

    def __repr__(self) -> str:
        return f"<RunStream {self.run_id}>"


def stream_new(agent: Agent, task: Task | str, timeout: float | None) -> RunStream:
    """The stream of a new run of ``task`` (or of the stored run its ``run_id`` names)."""
    from durable_agent.task import Task

    if isinstance(task, str):
        task = Task(task)
    elif not isinstance(task, Task):
        raise ConfigurationError(f"stream_async() takes a Task or a str, got {type(task).__name__}")
    named = task.run_id is not None
    # The id is chosen here (unless the task names one) so the stream can name
    # the run before it exists.
    run_id = task.run_id = task.run_id or uuid.uuid4().hex
    chosen = task
    # The closure holds the sink, never the stream: a stream dropped mid-run must
    # be collectable, so that it cancels its run (`RunStream.__del__`).
    sink: list[_Sink] = []

    async def start() -> RunOutput:
        if named:  # the run may exist: it is continued then, as do_async does
            # An id the store cannot look up is refused by `_do_task`, saying why.
            with contextlib.suppress(RunNotFoundError, ConfigurationError):
                sink[0].expect((await agent.db.get_run(run_id)).state)
        # A fresh id names no stored run: `existing=False` spares the store a read.
        output: RunOutput = await agent._do_task(
            chosen, existing=named, return_output=True, timeout=timeout
        )
        return output

    stream = RunStream(run_id, agent.db, start, state=RunState.PENDING)
    sink.append(stream._sink)
    return stream


def stream_continue(
    agent: Agent,
    run_id: str,
    task: Task | None,
    timeout: float | None,
    decisions: DecisionRequest | None,
) -> RunStream:
    """The stream of continuing stored run ``run_id``, as ``continue_run_async`` does."""
    sink: list[_Sink] = []  # not the stream itself: see `stream_new`

    async def start() -> RunOutput:
        with agent._naming_store(run_id):
            header = await agent.db.get_run(run_id)
        sink[0].expect(header.state)
        output: RunOutput = await agent._continue(run_id, task, True, decisions, timeout)
        return output

    stream = RunStream(run_id, agent.db, start)
    sink.append(stream._sink)
    return stream
