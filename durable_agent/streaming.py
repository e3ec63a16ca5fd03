"""The events a run's stream yields (`Agent.stream_async`, `follow`).

Two kinds, told apart by `StreamEvent.ephemeral`:

- **Stored** events (`StoredEvent` and its subclasses): one per record of the
  run's log, in ``seq`` order, each yielded once the store has accepted it. A
  client that keeps the last ``seq`` it saw can reconnect with
  ``follow(run_id, after_seq=seq)`` and miss nothing, see nothing twice.
- **Ephemeral** events: `TextDelta` (a piece of the answer being generated),
  `ModelCallStarted` (a model call attempt begins; ``repeat`` when an earlier
  process may have streamed it already) and `TextDiscarded` (text shown so far
  belongs to an attempt that was cut: drop it). They are never written to the
  store; the complete answer is, in `AnswerRecorded` / `ToolCallsAsked`.

A stream ends with `Finished` (DONE or CANCELLED) or `Paused` (WAITING for a
human: its ``requirements``), both carrying the same `RunOutput` as
``do_async(..., return_output=True)``; a failure ends it with the exception
``do_async`` raises, after the stored `Recorded` failure.

Every event has ``kind`` (a string discriminator) and `StreamEvent.as_json`,
which is what ``durable-agent runs follow --json`` prints and what a
server-sent-events endpoint sends (docs/streaming.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from durable_agent.fsm import RunState
from durable_agent.human import Requirement
from durable_agent.records import (
    AssistantMessage,
    Event,
    JSONValue,
    ModelResponseEvent,
    ToolCallPart,
    ToolFinishedEvent,
    ToolStartedEvent,
    TransitionEvent,
    WaitingEvent,
)
from durable_agent.run import RunOutput

__all__ = [
    "AnswerRecorded",
    "Finished",
    "ModelCallStarted",
    "Paused",
    "Recorded",
    "StateChanged",
    "StoredEvent",
    "StreamEvent",
    "TextDelta",
    "TextDiscarded",
    "ToolCallsAsked",
    "ToolFinished",
    "ToolStarted",
    "WaitingForHuman",
    "stored_event",
]


class _Base:
    """What every stream event has: a ``kind`` and a JSON form."""

    __slots__ = ()

    ephemeral: ClassVar[bool] = False
    """True for events that were never stored (deltas, call starts, discards)."""

    def as_json(self) -> dict[str, JSONValue]:
        """The event as one JSON object (``kind`` first)."""
        raise NotImplementedError


# -- ephemeral ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta(_Base):
    """A piece of the text the model is generating (not stored; the full answer is)."""

    ephemeral: ClassVar[bool] = True
    text: str
    attempt: int = 1
    kind: Literal["text_delta"] = field(default="text_delta", init=False)

    def as_json(self) -> dict[str, JSONValue]:
        return {"kind": self.kind, "text": self.text, "attempt": self.attempt, "ephemeral": True}


@dataclass(frozen=True, slots=True)
class ModelCallStarted(_Base):
    """A model call attempt begins streaming.

    ``repeat`` is True when the run was resumed in this call: an earlier process
    recorded its intent and may have streamed (part of) an answer that was lost,
    so the provider is asked again and what a client showed of it is stale.
    """

    ephemeral: ClassVar[bool] = True
    attempt: int
    repeat: bool = False
    kind: Literal["model_call_started"] = field(default="model_call_started", init=False)

    def as_json(self) -> dict[str, JSONValue]:
        return {"kind": self.kind, "attempt": self.attempt, "repeat": self.repeat,
                "ephemeral": True}


@dataclass(frozen=True, slots=True)
class TextDiscarded(_Base):
    """The text shown since the attempt began will not be recorded: drop it.

    Sent when an attempt fails mid-stream (a retry, if any, streams anew) and at
    the start of a repeated call (``text`` is then empty: an earlier process
    streamed what is discarded).
    """

    ephemeral: ClassVar[bool] = True
    text: str
    reason: str
    attempt: int = 1
    kind: Literal["text_discarded"] = field(default="text_discarded", init=False)

    def as_json(self) -> dict[str, JSONValue]:
        return {"kind": self.kind, "text": self.text, "reason": self.reason,
                "attempt": self.attempt, "ephemeral": True}


# -- stored -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEvent(_Base):
    """One record of the run's log, yielded once stored.

    ``previous`` and ``state`` are the run's state before and after it
    (`changed_state` tells a transition); ``record`` is the stored record itself.
    """

    seq: int
    previous: RunState
    state: RunState
    record: Event

    @property
    def changed_state(self) -> bool:
        """Whether this record moved the run to another state."""
        return self.record.trigger is not None

    def as_json(self) -> dict[str, JSONValue]:
        kind: str = getattr(self, "kind", "recorded")
        return {
            "kind": kind,
            "seq": self.seq,
            "previous": self.previous.value,
            "state": self.state.value,
            "record": self.record.model_dump(mode="json"),
        }


@dataclass(frozen=True, slots=True)
class StateChanged(StoredEvent):
    """A transition with no payload of its own (start, tools_done, resume)."""

    kind: Literal["state_changed"] = field(default="state_changed", init=False)


@dataclass(frozen=True, slots=True)
class AnswerRecorded(StoredEvent):
    """The model's final answer, stored (``message.content`` is the whole text)."""

    kind: Literal["answer_recorded"] = field(default="answer_recorded", init=False)

    @property
    def message(self) -> AssistantMessage:
        """The assistant message as stored."""
        assert isinstance(self.record, ModelResponseEvent)
        return self.record.message


@dataclass(frozen=True, slots=True)
class ToolCallsAsked(StoredEvent):
    """The model asked for tool calls; the answer and their intents are stored."""

    kind: Literal["tool_calls_asked"] = field(default="tool_calls_asked", init=False)

    @property
    def calls(self) -> tuple[ToolCallPart, ...]:
        """The calls asked for, in order."""
        assert isinstance(self.record, ModelResponseEvent)
        return self.record.message.tool_calls


@dataclass(frozen=True, slots=True)
class ToolStarted(StoredEvent):
    """A tool call is about to run (its intent is stored)."""

    kind: Literal["tool_started"] = field(default="tool_started", init=False)

    @property
    def call_id(self) -> str:
        """The call's id."""
        assert isinstance(self.record, ToolStartedEvent)
        return self.record.call_id


@dataclass(frozen=True, slots=True)
class ToolFinished(StoredEvent):
    """A tool call's result, stored (``is_error`` for a failure the model is told of)."""

    kind: Literal["tool_finished"] = field(default="tool_finished", init=False)

    @property
    def call_id(self) -> str:
        """The call's id."""
        assert isinstance(self.record, ToolFinishedEvent)
        return self.record.result.call_id

    @property
    def result(self) -> str:
        """The result's text as the model sees it."""
        assert isinstance(self.record, ToolFinishedEvent)
        return self.record.result.content


@dataclass(frozen=True, slots=True)
class WaitingForHuman(StoredEvent):
    """The run paused: these requirements wait for a decision (then `Paused` ends the stream)."""

    kind: Literal["waiting"] = field(default="waiting", init=False)


@dataclass(frozen=True, slots=True)
class Recorded(StoredEvent):
    """Any other record: the input, a failed attempt, a decision, a failure, a cancel."""

    kind: Literal["recorded"] = field(default="recorded", init=False)


# -- the end ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished(_Base):
    """The run came to rest DONE or CANCELLED: ``output`` as ``do_async`` returns it.

    `follow` also ends with it for a run resting in ERROR (a stream raises instead).
    """

    output: RunOutput
    kind: Literal["finished"] = field(default="finished", init=False)

    def as_json(self) -> dict[str, JSONValue]:
        return {"kind": self.kind, "run_id": self.output.run_id,
                "state": self.output.state.value, "output": self.output.output}


@dataclass(frozen=True, slots=True)
class Paused(_Base):
    """The run is WAITING for a human; decide its ``requirements`` and continue it."""

    output: RunOutput
    kind: Literal["paused"] = field(default="paused", init=False)

    @property
    def requirements(self) -> list[Requirement]:
        """The open requirements, to decide with their methods."""
        return list(self.output.requirements)

    def as_json(self) -> dict[str, JSONValue]:
        return {
            "kind": self.kind,
            "run_id": self.output.run_id,
            "state": self.output.state.value,
            "requirements": [
                {"id": r.id, "kind": r.kind, "tool_name": r.tool_name, "call_id": r.call_id}
                for r in self.output.requirements
            ],
        }


StreamEvent: TypeAlias = (
    TextDelta | ModelCallStarted | TextDiscarded | StoredEvent | Finished | Paused
)
"""Everything a stream yields; match on the class or on ``kind``.

A `StoredEvent` is always one of its subclasses: `StateChanged`,
`AnswerRecorded`, `ToolCallsAsked`, `ToolStarted`, `ToolFinished`,
`WaitingForHuman` or `Recorded`."""


def stored_event(record: Event, previous: RunState) -> StoredEvent:
    """The stream event for one stored record (``previous``: the state before it)."""
    cls: type[StoredEvent]
    match record:
        case TransitionEvent():
            cls = StateChanged
        case ModelResponseEvent():
            cls = ToolCallsAsked if record.message.tool_calls else AnswerRecorded
        case ToolStartedEvent():
            cls = ToolStarted
        case ToolFinishedEvent():
            cls = ToolFinished
        case WaitingEvent():
            cls = WaitingForHuman
        case _:
            cls = Recorded
    return cls(seq=record.seq, previous=previous, state=record.state, record=record)
