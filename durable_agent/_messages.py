"""The versioned base of stored records, and the provider-neutral messages.

Kept apart from `durable_agent.records` only for size; `records` re-exports
every name, and is where code imports them from. `LeaseTaken` (who wrote an
event) lives here for the same reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WrapValidator

from durable_agent._storable import keep_too_deep
from durable_agent.fsm import RunState

__all__ = [
    "SCHEMA_VERSION",
    "AssistantMessage",
    "Deep",
    "JSONValue",
    "LeaseTaken",
    "Message",
    "Record",
    "SystemMessage",
    "ToolCallPart",
    "ToolResultMessage",
    "UserMessage",
]

SCHEMA_VERSION: Final = 2
"""The newest record schema this version writes and reads.

Older records are brought up to it when read (`durable_agent._upcast`):
1. the first release; 2. tool intents name the tool's identity (argument-schema
hash, ``idempotent``, the agent's version), runs record their tools, and the
``reconciled`` event.
"""

JSONValue: TypeAlias = JsonValue
"""Any value JSON can hold: the type of tool arguments and results."""


Deep = WrapValidator(keep_too_deep)
"""Marks a JSON field whose too-deep value is kept for the encoder to refuse by name."""


class Record(BaseModel):
    """The base of every versioned record: frozen, tolerant of fields it does not know."""

    # defer_build on every stored shape: a model's validator is built when it is
    # first used, not when `durable_agent` is imported, so a CLI command or a
    # process that names only a few records skips the rest (benchmarks/bench_import.py).
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    schema_version: int = SCHEMA_VERSION


class LeaseTaken(BaseModel):
    """Which process took a run's lease, and when: stamped on the first event it writes.

    A log whose stamps name two owners, the first leaving the run mid-step
    (MODEL_CALL, TOOL_EXEC), shows where a process died or lost its lease and
    another took the run over; the gap between the last event of the one and
    ``at`` is how long the run was stranded. Events before this field existed
    carry none, and read back the same.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    owner: str
    """The lease owner id, ``host:pid:nonce`` (`durable_agent.backend.LeaseOwner.id`)."""
    generation: int
    at: datetime
    """When the store granted the lease (this process's clock)."""


class _Event(Record):
    """The fields every event has (`durable_agent.records.Event` lists the kinds)."""

    seq: int
    state: RunState
    """The run's state after this event."""
    trigger: str | None = None
    """The machine trigger this event records, or None when the state did not change."""
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None
    """The W3C traceparent of the telemetry span of the segment whose first write this is
    (only with tracing on): the next segment's span links to it (`durable_agent.telemetry`)."""
    lease_taken: LeaseTaken | None = None
    """Set on the first event written under a newly taken lease (who took it, when)."""
    requested_by: str | None = None
    """Who asked for this event from outside the run (the inspector's ``--user`` or token
    name on a resume it handed to the fleet); None (and left out of the JSON) otherwise."""


# -- messages ---------------------------------------------------------------


class ToolCallPart(BaseModel):
    """One tool call the model asked for: ``id`` is unique within the run."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    name: str
    arguments: Annotated[dict[str, JSONValue], Deep] = Field(default_factory=dict)


class SystemMessage(Record):
    """Instructions for the model."""

    role: Literal["system"] = "system"
    content: str


class UserMessage(Record):
    """What the user asked."""

    role: Literal["user"] = "user"
    content: str


class AssistantMessage(Record):
    """A model's answer: text, tool calls, or both."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: tuple[ToolCallPart, ...] = ()


class ToolResultMessage(Record):
    """The result of one tool call; ``is_error`` marks an error result shown to the model."""

    role: Literal["tool"] = "tool"
    call_id: str
    name: str
    content: str
    is_error: bool = False


Message: TypeAlias = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolResultMessage,
    Field(discriminator="role"),
]
"""A provider-neutral message; ``role`` tells which kind."""
