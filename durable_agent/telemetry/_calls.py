"""The spans of one model attempt (`ChatSpan`) and of one tool call (`ToolSpan`).

Both are children of their segment's span (`durable_agent.telemetry._live`),
and the current span while the call runs, so spans an SDK or a tool creates
nest under them. A streamed attempt also times its chunks (the GenAI
conventions' ``time_to_first_chunk`` / ``time_per_output_chunk``) and, when its
stream is cut, says how many chunks the consumer saw that are not recorded.
"""

from __future__ import annotations

import itertools
import time
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from durable_agent.telemetry import _content
from durable_agent.telemetry._hook import CURRENT_CHAT, Call

if TYPE_CHECKING:
    from durable_agent.models import ChatModel, ModelResponse
    from durable_agent.records import ToolCallPart
    from durable_agent.run import RunContext
    from durable_agent.telemetry._live import LiveHook
    from durable_agent.telemetry._otel import Instruments

__all__ = ["ChatSpan", "ToolSpan", "error_type", "fail", "provider_name"]

_PROVIDERS = {
    "durable_agent.models.openai": "openai",
    "durable_agent.models.anthropic": "anthropic",
    "durable_agent.models.scripted": "durable_agent.scripted",
}


def provider_name(model: ChatModel) -> str:
    """``gen_ai.provider.name``: the adapter's provider, or the model class for others."""
    named = getattr(model, "provider_name", None)
    if isinstance(named, str):
        return named
    cls = type(model)
    return _PROVIDERS.get(cls.__module__, cls.__name__)


def error_type(error: BaseException) -> str:
    """``error.type``: the exception's qualified class name, as `ErrorInfo.type` stores it."""
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def fail(span: trace.Span, error: BaseException, capture: bool) -> str:
    """Mark ``span`` failed with ``error``'s type (and its redacted message with capture on)."""
    kind = error_type(error)
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, _content.text(str(error)) if capture else kind))
    return kind


class ChatSpan(Call):
    """The ``chat {model}`` span and metrics of one model attempt."""

    __slots__ = (
        "_attrs", "_capture", "_chunks", "_current", "_hook", "_i", "_shown", "_span", "_started",
        "_token",
    )

    def __init__(
        self, hook: LiveHook, instruments: Instruments, ctx: RunContext, model: ChatModel,
        attempt: int,
    ) -> None:
        self._hook = hook
        self._i = instruments
        self._capture = instruments.capture_content
        provider = provider_name(model)
        name = model.name.removeprefix(f"{provider}/")  # "openai/gpt-4o" names gpt-4o
        self._attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": name,
        }
        self._span: trace.Span | None = None
        self._token: object = None
        tracer = instruments.tracer
        if tracer is not None:
            span = tracer.start_span(
                f"chat {name}",
                context=hook.parent(),
                kind=SpanKind.CLIENT,
                attributes={
                    **self._attrs,
                    "gen_ai.conversation.id": hook.run_id,
                    "gen_ai.agent.name": hook.agent,
                    "durable_agent.run.id": hook.run_id,
                    "durable_agent.attempt": attempt,
                },
            )
            if self._capture and span.is_recording():
                span.set_attribute("gen_ai.input.messages", _content.messages_json(ctx.messages))
            self._span = span
        self._chunks: list[float] = []
        """When each chunk of a streamed attempt arrived (perf_counter)."""
        self._shown: list[str] | None = [] if self._capture else None
        self._current: Token[Call | None] | None = None
        self._started = time.perf_counter()

    def __enter__(self) -> Call:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._current = CURRENT_CHAT.set(self)  # a stream relaying this attempt finds it
        return self

    def chunk(self, text: str) -> None:
        # Only a timestamp here, on the path of every delta to the consumer: the
        # histograms are recorded when the attempt ends (an SDK record costs
        # 5-40 us; a timestamp a fraction of one).
        self._chunks.append(time.perf_counter())
        if self._shown is not None:
            self._shown.append(text)

    def _time_chunks(self, span: trace.Span | None, attrs: dict[str, Any]) -> None:
        """Record the chunk timing of a streamed attempt (GenAI conventions)."""
        times = self._chunks
        first = times[0] - self._started
        self._i.time_to_first_chunk.record(first, attrs)
        per_chunk = self._i.time_per_output_chunk
        for previous, now in itertools.pairwise(times):
            # From the end of the previous chunk to the end of this one.
            per_chunk.record(now - previous, attrs)
        if span is not None:
            span.set_attributes({
                "gen_ai.response.time_to_first_chunk": first,
                "durable_agent.stream.chunks": len(times),
            })

    def answered(self, response: ModelResponse) -> None:
        usage = response.usage
        tokens = self._i.token_usage
        tokens.record(usage.input_tokens, {**self._attrs, "gen_ai.token.type": "input"})
        tokens.record(usage.output_tokens, {**self._attrs, "gen_ai.token.type": "output"})
        span = self._span
        if span is None:
            return
        message = response.message
        attributes: dict[str, Any] = {
            "gen_ai.response.model": response.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.response.finish_reasons": (
                ("tool_calls",) if message.tool_calls else ("stop",)
            ),
        }
        if response.request_id:
            attributes["gen_ai.response.id"] = response.request_id
        if self._capture:
            attributes["gen_ai.output.messages"] = _content.messages_json([message])
        span.set_attributes(attributes)  # one lock, not one per attribute

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        instruments = self._i
        attrs = self._attrs
        if error is not None:
            attrs = {**attrs, "error.type": error_type(error)}
            instruments.attempts_failed.add(
                1, {"gen_ai.agent.name": self._hook.agent, **attrs}
            )
        instruments.operation_duration.record(time.perf_counter() - self._started, attrs)
        if self._chunks:
            self._time_chunks(self._span, attrs)
        if self._current is not None:
            CURRENT_CHAT.reset(self._current)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        if span is not None:
            if error is not None:
                if self._chunks:
                    self._discarded(span, error)
                fail(span, error, self._capture)
            span.end()

    def _discarded(self, span: trace.Span, error: BaseException) -> None:
        """The stream was cut after some chunks: what the consumer saw is not recorded."""
        attributes: dict[str, Any] = {
            "durable_agent.stream.chunks_discarded": len(self._chunks),
            "error.type": error_type(error),
        }
        if self._shown is not None:
            attributes["durable_agent.stream.discarded_text"] = _content.text("".join(self._shown))
        span.add_event("durable_agent.stream.discarded", attributes)


class ToolSpan(Call):
    """The ``execute_tool {tool}`` span and metrics of one tool call."""

    __slots__ = ("_capture", "_hook", "_i", "_span", "_started", "_token")

    def __init__(
        self, hook: LiveHook, instruments: Instruments, call: ToolCallPart, attempt: int
    ) -> None:
        self._hook = hook
        self._i = instruments
        self._capture = instruments.capture_content
        self._span: trace.Span | None = None
        self._token: object = None
        tracer = instruments.tracer
        if tracer is not None:
            span = tracer.start_span(
                f"execute_tool {call.name}",
                context=hook.parent(),
                kind=SpanKind.INTERNAL,
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": call.name,
                    "gen_ai.tool.call.id": call.id,
                    "gen_ai.tool.type": "function",
                    "gen_ai.conversation.id": hook.run_id,
                    "durable_agent.run.id": hook.run_id,
                    "durable_agent.attempt": attempt,
                },
            )
            if self._capture and span.is_recording():
                span.set_attribute(
                    "gen_ai.tool.call.arguments", _content.arguments_json(call.arguments)
                )
            self._span = span
        self._started = time.perf_counter()

    def __enter__(self) -> Call:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def returned(self, content: str, *, is_error: bool = False) -> None:
        span = self._span
        if span is None:
            return
        if is_error:
            span.set_attribute("error.type", "tool_error")
        if self._capture:
            span.set_attribute("gen_ai.tool.call.result", _content.text(content))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        attrs: dict[str, Any] = {"gen_ai.agent.name": self._hook.agent}
        if error is not None:
            attrs["error.type"] = error_type(error)
        self._i.tool_duration.record(elapsed, attrs)
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        if span is not None:
            if error is not None:
                fail(span, error, self._capture)
            span.end()
