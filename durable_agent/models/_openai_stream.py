"""`OpenAIModel.stream`: Chat Completions with ``stream=True`` and usage in the stream.

The chunks are folded into one completion (text, tool calls by index, finish
reason, the usage chunk that ``stream_options={"include_usage": True}`` adds
at the end), which `OpenAIModel._answer` reads exactly as a non-streamed one,
so both paths share every check (refusals, length, content filter, tool
arguments). ``timeout`` bounds the whole stream, as it bounds a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from durable_agent._redact import redact_exception
from durable_agent.errors import ModelConnectionError
from durable_agent.models import ModelDelta, ModelResponse, OutputSchema, ToolDefinition
from durable_agent.models._provider_common import broken_mid_stream
from durable_agent.records import Message

if TYPE_CHECKING:
    from durable_agent.models.openai import OpenAIModel

__all__ = ["stream_completion"]


async def stream_completion(
    model: OpenAIModel,
    messages: Sequence[Message],
    tools: Sequence[ToolDefinition],
    output_schema: OutputSchema | None,
) -> AsyncIterator[ModelDelta | ModelResponse]:
    """Text deltas as they arrive, then the folded answer as a `ModelResponse`.

    A failure leaves it cleaned of secrets (`durable_agent.models._http.redacted`).
    """
    try:
        from durable_agent.models.openai import _malformed

        client = model._client()
        deadline = asyncio.get_running_loop().time() + model.timeout
        stream = await model._call(
            client,
            lambda: client.chat.completions.create(
                stream=True,
                stream_options={"include_usage": True},
                **model._options(messages, tools, output_schema),
            ),
            deadline=deadline,
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
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                text = fold.add(chunk)
                if text:
                    yield ModelDelta(text)
        except Exception as exc:
            mine = model._translated(exc, client)
            if mine is None:
                raise
            if isinstance(mine, ModelConnectionError):
                mine = broken_mid_stream("OpenAI", exc)
            raise mine from exc
        finally:
            await stream.close()
        if fold.finish is None:
            # Ended without a finish reason: the body was closed before the answer was.
            raise ModelConnectionError(
                f"OpenAI ended the stream of model {model.model!r} before its answer was complete; "
                "retryable"
            )
        try:
            completion = ChatCompletion.model_validate(fold.completion(model.model))
            completion._request_id = stream.response.headers.get("x-request-id")
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise _malformed(f"the stream did not make a chat completion ({exc})") from exc
        yield model._answer(completion)
    except Exception as exc:
        redact_exception(exc)
        raise


class _Fold:
    """The chunks of one streamed completion, gathered."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None

    def add(self, chunk: ChatCompletionChunk) -> str:
        """Take ``chunk`` in; return its text (empty when it has none)."""
        self.id = self.id or chunk.id
        self.model = self.model or chunk.model
        if chunk.usage is not None:
            self.usage = {
                "prompt_tokens": chunk.usage.prompt_tokens,
                "completion_tokens": chunk.usage.completion_tokens,
                "total_tokens": chunk.usage.total_tokens,
            }
        text = ""
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                text = delta.content
                self.text.append(text)
            if delta.refusal:
                self.refusal.append(delta.refusal)
            for call in delta.tool_calls or ():
                entry = self.calls.setdefault(
                    call.index, {"id": "", "type": "function", "name": "", "arguments": []}
                )
                if call.id:
                    entry["id"] = call.id
                if call.type:
                    entry["type"] = call.type
                if call.function is not None:
                    if call.function.name:
                        entry["name"] += call.function.name
                    if call.function.arguments:
                        entry["arguments"].append(call.function.arguments)
            if choice.finish_reason:
                self.finish = choice.finish_reason
        return text

    def completion(self, fallback_model: str) -> dict[str, Any]:
        """The gathered chunks as the body of a non-streamed completion."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.text) if self.text or not self.calls else None,
            "refusal": "".join(self.refusal) or None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": c["type"],
                    "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
                }
                for _, c in sorted(self.calls.items())
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model or fallback_model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": self.finish or "stop"}
            ],
            "usage": self.usage,
        }

