"""`ScriptedModel`: a deterministic, offline chat model for tests, demos and examples.

The answer for a turn is chosen by how many assistant messages the history
already holds, not by a counter in the object, so a run resumed in a new
process gets exactly the answers an uninterrupted run would have got.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from durable_agent.errors import ConfigurationError, ScriptExhaustedError
from durable_agent.models import (
    ChatModel,
    ModelDelta,
    ModelResponse,
    OutputSchema,
    ToolDefinition,
)
from durable_agent.records import (
    AssistantMessage,
    JSONValue,
    Message,
    ToolCallPart,
    Usage,
    UserMessage,
)

__all__ = ["ScriptedFailure", "ScriptedModel", "ToolCall"]

_HISTORIES = 4096
"""Histories a model keeps a count for: more concurrent runs than that only recount."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A script item: the model calls tool ``name`` with ``args``."""

    name: str
    args: Mapping[str, JSONValue] = field(default_factory=dict)


ScriptItem = str | ToolCall | Sequence[ToolCall]
"""A final answer, one tool call, or several tool calls made in one turn."""


@dataclass(frozen=True, slots=True)
class ScriptedFailure:
    """Raise ``error`` on ``turn`` (0-based) for its first ``times`` attempts."""

    turn: int
    error: BaseException
    times: int = 1


class ScriptedModel(ChatModel):
    """Answers from a fixed script, offline.

    Args:
        script: one item per turn: a `str` is a final answer, a `ToolCall` one
            tool call, a list of `ToolCall` parallel calls in one turn.
        delay: seconds to wait before answering: one number for every turn, or
            one per turn.
        failures: errors to raise on given turns, for their first attempts
            (counted per conversation in this model object).
        name: the model name recorded in the run's history.
        chunk_size: characters per delta when the answer is streamed
            (`ChatModel.stream`, used by ``Agent.stream_async``).
        chunk_delay: seconds to wait before each streamed delta after the first.

    ``calls`` counts the requests this object answered or failed. Each turn's
    answer is built once and the same (frozen) record is given to every
    conversation, so many runs sharing one model cost it no more per call
    than one run does.
    """

    def __init__(
        self,
        script: Sequence[ScriptItem],
        *,
        delay: float | Sequence[float] = 0.0,
        failures: Sequence[ScriptedFailure] = (),
        name: str = "scripted",
        chunk_size: int = 8,
        chunk_delay: float = 0.0,
    ) -> None:
        if isinstance(script, str) or not isinstance(script, Sequence):
            raise ConfigurationError("ScriptedModel(script=...) must be a list of turns")
        self._script = [self._check_item(i, item) for i, item in enumerate(script)]
        if isinstance(delay, int | float):
            self._delays: list[float] = [float(delay)] * len(self._script)
        else:
            self._delays = [float(d) for d in delay]
            if len(self._delays) != len(self._script):
                raise ConfigurationError(
                    f"ScriptedModel: {len(self._delays)} delays for {len(self._script)} turns"
                )
        self._failures = {f.turn: f for f in failures}
        self._attempts: dict[tuple[int, str], int] = {}
        self._name = name
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"ScriptedModel(chunk_size={chunk_size!r}) must be >= 1")
        if not isinstance(chunk_delay, int | float) or chunk_delay < 0:
            raise ConfigurationError(f"ScriptedModel(chunk_delay={chunk_delay!r}) must be >= 0")
        self.chunk_size = chunk_size
        self.chunk_delay = float(chunk_delay)
        self._counted: dict[int, tuple[Sequence[Message], int, int]] = {}
        """Per history (by identity, the history held): its length and assistant count."""
        self._answers: dict[int, AssistantMessage] = {}
        """The (immutable) answer of each turn, built once: every conversation gets the same."""
        self._usages: dict[int, Usage] = {}
        self.calls = 0

    @staticmethod
    def _check_item(index: int, item: object) -> str | tuple[ToolCall, ...]:
        if isinstance(item, str):
            return item
        if isinstance(item, ToolCall):
            return (item,)
        if isinstance(item, Sequence) and item and all(isinstance(c, ToolCall) for c in item):
            return tuple(c for c in item if isinstance(c, ToolCall))
        raise ConfigurationError(
            f"ScriptedModel script item {index} must be a str, a ToolCall or a non-empty "
            f"list of ToolCall, got {item!r}"
        )

    @property
    def name(self) -> str:
        return self._name

    def _turn(self, messages: Sequence[Message]) -> int:
        """How many assistant messages the history holds: the turn to answer.

        Counted incrementally when a history grows between calls, as the
        engine's live history does, so a long run is not quadratic; one count
        per history, so neither are many runs that share this model (each call
        looks at the messages added since that history's last call).
        """
        start, count = 0, 0
        counted = self._counted
        known = counted.pop(id(messages), None)
        if known is not None:
            history, length, seen = known
            if history is messages and length <= len(messages):
                start, count = length, seen
        for index in range(start, len(messages)):
            if messages[index].role == "assistant":
                count += 1
        # Holding the history itself (not only its id) means a new list never
        # matches; the oldest are dropped past a bound (a miss only recounts).
        counted[id(messages)] = (messages, len(messages), count)
        if len(counted) > _HISTORIES:
            del counted[next(iter(counted))]
        return count

    def _answer(self, turn: int) -> AssistantMessage:
        """The answer of ``turn``, the same (frozen) record for every conversation."""
        message = self._answers.get(turn)
        if message is None:
            item = self._script[turn]
            if isinstance(item, str):
                message = AssistantMessage(content=item)
            else:
                message = AssistantMessage(
                    tool_calls=tuple(
                        ToolCallPart(id=f"call_{turn}_{i}", name=c.name, arguments=dict(c.args))
                        for i, c in enumerate(item)
                    )
                )
            self._answers[turn] = message
        return message

    def _usage(self, length: int) -> Usage:
        # Made-up but deterministic token counts, cheap to compute on long histories.
        usage = self._usages.get(length)
        if usage is None:
            usage = Usage(input_tokens=10 * length, output_tokens=10, requests=1)
            if len(self._usages) < _HISTORIES:
                self._usages[length] = usage
        return usage

    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        self.calls += 1
        turn = self._turn(messages)
        if turn >= len(self._script):
            raise ScriptExhaustedError(
                f"ScriptedModel has {len(self._script)} turns; the conversation asks for "
                f"turn {turn + 1}"
            )
        failure = self._failures.get(turn)
        if failure is not None:
            key = (turn, _conversation_key(messages))
            seen = self._attempts.get(key, 0)
            self._attempts[key] = seen + 1
            if seen < failure.times:
                raise failure.error
        if self._delays[turn]:
            await asyncio.sleep(self._delays[turn])
        return ModelResponse(
            message=self._answer(turn), model=self._name, usage=self._usage(len(messages))
        )

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> AsyncIterator[ModelDelta | ModelResponse]:
        """The scripted answer as deltas of ``chunk_size`` characters, then the answer."""
        response = await self.request(messages, tools=tools, output_schema=output_schema)
        text = response.message.content or ""
        for start in range(0, len(text), self.chunk_size):
            if start and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield ModelDelta(text[start : start + self.chunk_size])
        yield response


def _conversation_key(messages: Sequence[Message]) -> str:
    """Identify a conversation by its first user message, so failures count per run."""
    first = next((m.content for m in messages if isinstance(m, UserMessage)), "")
    return hashlib.sha1(first.encode(), usedforsecurity=False).hexdigest()
