"""`AnthropicModel.stream`: the Messages API's streaming events, folded into one message.

``message_start`` (id, model, input usage), per content block
``content_block_start`` / ``content_block_delta`` (``text_delta`` is yielded as
it comes; ``input_json_delta`` of a tool-use block is gathered) /
``content_block_stop``, ``message_delta`` (stop reason, output usage) and
``message_stop``. The folded message goes through `AnthropicModel._answer`,
exactly as a non-streamed one, so both paths share every check. An ``error``
event raises (retryable when its type is overloaded / api / rate limit /
timeout); a stream that ends before ``message_stop`` is a broken connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from anthropic.types import Message as AnthropicMessage
from anthropic.types import RawMessageStreamEvent

from durable_agent._redact import redact_exception
from durable_agent.errors import ModelConnectionError
from durable_agent.models import ModelDelta, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.models._provider_common import broken_mid_stream
from durable_agent.records import Message

if TYPE_CHECKING:
    from durable_agent.models.anthropic import AnthropicModel

__all__ = ["stream_message"]


async def stream_message(
    model: AnthropicModel,
    messages: Sequence[Message],
    tools: Sequence[ToolDefinition],
    output_schema: OutputSchema | None,
) -> AsyncIterator[ModelDelta | ModelResponse]:
    """Text deltas as they arrive, then the folded answer as a `ModelResponse`.

    A failure leaves it cleaned of secrets (`durable_agent.models._http.redacted`).
    """
    try:
        from durable_agent.models.anthropic import _malformed

        client = model._client()
        options, output_tool = model._prepare(messages, tools, output_schema)
        deadline = asyncio.get_running_loop().time() + model.timeout
        stream = await model._call(
            client, lambda: client.messages.create(stream=True, **options), deadline=deadline
        )
        fold = _Fold()
        try:
            while True:
                try:
                    # The deadline covers each wait, never the consumer's time between deltas.
                    # The stream's own ``__anext__``, not ``__aiter__``: the SDK's ``__aiter__``
                    # is one more async generator around the same iterator, which a consumer
                    # that stops early would leave to the garbage collector, unclosed.
                    async with asyncio.timeout_at(deadline):
                        event = await anext(stream)
                except StopAsyncIteration:
                    break
                text = fold.add(event)
                if text:
                    yield ModelDelta(text)
        except Exception as exc:
            mine = model._translated(exc, client)
            if mine is None:
                if not _broken(exc):
                    raise
                mine = broken_mid_stream("Anthropic", exc)
            raise mine from exc
        finally:
            await stream.close()
        if not fold.stopped:
            raise ModelConnectionError(
                f"Anthropic ended the stream of model {model.model!r} before message_stop; "
                "retryable"
            )
        try:
            answer = AnthropicMessage.model_validate(fold.message(model.model))
            answer._request_id = stream.response.headers.get("request-id")
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise _malformed(f"the stream did not make a message ({exc})") from exc
        yield model._answer(answer, output_tool)
    except Exception as exc:
        redact_exception(exc)
        raise


def _broken(exc: BaseException) -> bool:
    """Whether ``exc`` is the HTTP client's error for a connection lost mid-body.

    The SDK lets these through unwrapped while a stream is read.
    """
    return any(cls.__name__ in ("TransportError", "StreamError") for cls in type(exc).__mro__)


class _Fold:
    """The events of one streamed message, gathered."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}
        self.blocks: dict[int, dict[str, Any]] = {}
        self.json: dict[int, list[str]] = {}
        self.stop_reason: str | None = None
        self.output_tokens = 0
        self.stopped = False
        self._texts = 0

    def add(self, event: RawMessageStreamEvent) -> str:
        """Take ``event`` in; return the text it adds (empty when none)."""
        match event.type:
            case "message_start":
                self.start = event.message.model_dump()
            case "content_block_start":
                block = event.content_block.model_dump()
                self.blocks[event.index] = block
                if block["type"] == "text":
                    self._texts += 1
                    if self._texts > 1:
                        # The message's text is its text blocks joined by newlines.
                        return "\n" + str(block.get("text") or "")
                    return str(block.get("text") or "")
            case "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    self.blocks[event.index]["text"] += delta.text
                    return delta.text
                if delta.type == "input_json_delta":
                    self.json.setdefault(event.index, []).append(delta.partial_json)
            case "message_delta":
                self.stop_reason = event.delta.stop_reason
                self.output_tokens = event.usage.output_tokens
            case "message_stop":
                self.stopped = True
        return ""

    def message(self, fallback_model: str) -> dict[str, Any]:
        """The gathered events as a non-streamed message."""
        content = []
        for index, block in sorted(self.blocks.items()):
            if block["type"] == "tool_use":
                raw = "".join(self.json.get(index, ()))
                block = {**block, "input": json.loads(raw) if raw.strip() else {}}
            content.append(block)
        usage = dict(self.start.get("usage") or {})
        usage["output_tokens"] = self.output_tokens
        return {
            **self.start,
            "model": self.start.get("model") or fallback_model,
            "content": content,
            "stop_reason": self.stop_reason,
            "usage": usage,
        }
