"""Where the engine meets a stream: two calls, free when nobody streams.

The engine stays unaware of streaming (DESIGN.md §7): a stream
(`durable_agent._run_stream`) sets a `StreamSink` in the context of the task
that drives its run, and the engine calls `model_call` instead of
``model.request`` and `recorded` after every append. Without a sink, or for
another run (an agent run inside a tool), both are one context-variable read.
The sink only sees what the engine does; it never writes to the store, so
streaming cannot change what is recorded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextvars import ContextVar
from typing import Protocol

from durable_agent.models import ChatModel, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.records import Event, Message

__all__ = ["SINK", "StreamSink", "model_call", "recorded"]


class StreamSink(Protocol):
    """What a stream offers the engine for the one run it follows."""

    run_id: str

    def model_call(
        self,
        model: ChatModel,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None,
        attempt: int,
        repeated: bool,
    ) -> Awaitable[ModelResponse]:
        """Perform one model call attempt through the model's stream."""
        ...

    def recorded(self, events: Sequence[Event]) -> None:
        """Events the store has just accepted, in seq order (never raises)."""
        ...


SINK: ContextVar[StreamSink | None] = ContextVar("durable_agent_stream_sink", default=None)


def model_call(
    model: ChatModel,
    run_id: str,
    messages: Sequence[Message],
    *,
    tools: Sequence[ToolDefinition],
    output_schema: OutputSchema | None,
    attempt: int,
    repeated: bool,
) -> Awaitable[ModelResponse]:
    """One attempt of a model call: streamed when a stream follows ``run_id``."""
    sink = SINK.get()
    if sink is None or sink.run_id != run_id:
        return model.request(messages, tools=tools, output_schema=output_schema)
    return sink.model_call(
        model, messages, tools=tools, output_schema=output_schema,
        attempt=attempt, repeated=repeated,
    )


def recorded(run_id: str, events: Sequence[Event]) -> None:
    """Tell a stream following ``run_id`` that ``events`` are stored."""
    sink = SINK.get()
    if sink is not None and sink.run_id == run_id:
        sink.recorded(events)
