"""The stored shapes: run header, events, provider-neutral messages.

Everything a backend writes is one of these pydantic models, serialized to
JSON by `encode_event` / `encode_header` and read back by `decode_event` /
`decode_header` (the one place of serialization). No pickle, no import by
name on load (DESIGN.md §3 rule 6). Every record carries ``schema_version``;
a record newer than `SCHEMA_VERSION` raises `SchemaVersionError` instead of
being misread.

A run is a header plus an append-only log of events. Each event holds only
what is new (DESIGN.md §2), so storage grows linearly with the conversation.

The header and the small value records are defined in
`durable_agent._header_records`, the messages in `durable_agent._messages`;
import them from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal, NoReturn, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticSerializationError, SchemaSerializer, SchemaValidator

from durable_agent._header_records import ErrorInfo, Lease, RunHeader, Usage, utcnow
from durable_agent._messages import (
    SCHEMA_VERSION,
    AssistantMessage,
    Deep,
    JSONValue,
    LeaseTaken,
    Message,
    SystemMessage,
    ToolCallPart,
    ToolResultMessage,
    UserMessage,
    _Event,
)
from durable_agent._storable import (
    MAX_DEPTH,
    check_answer,
    check_record,
    encode_tool_result,
    escape_surrogates,
    nothing_to_check,
)
from durable_agent._tool_records import ReconcileAnswer, ReconciledEvent, ToolSignature
from durable_agent._upcast import (
    check_version,
    read_record,
    short_error,
    upcast_event,
    upcast_header,
)
from durable_agent.errors import CorruptRunError, UnstorableValueError
from durable_agent.fsm import RunState

__all__ = [
    "MAX_DEPTH",
    "SCHEMA_VERSION",
    "AssistantMessage",
    "CancelledEvent",
    "CheckedEvents",
    "CreatedEvent",
    "DecisionAction",
    "DecisionEvent",
    "ErrorInfo",
    "Event",
    "FailedEvent",
    "ForkOrigin",
    "JSONValue",
    "Lease",
    "LeaseTaken",
    "Message",
    "ModelAttemptFailedEvent",
    "ModelResponseEvent",
    "OutputFormat",
    "OutputRejectedEvent",
    "ReconcileAnswer",
    "ReconciledEvent",
    "RequirementKind",
    "RequirementRecord",
    "RunHeader",
    "StoredRun",
    "SystemMessage",
    "ToolCallPart",
    "ToolFinishedEvent",
    "ToolResultMessage",
    "ToolSignature",
    "ToolStartedEvent",
    "TransitionEvent",
    "Usage",
    "UserMessage",
    "WaitingEvent",
    "check_answer",
    "check_event",
    "check_events",
    "decode_event",
    "decode_header",
    "decode_header_fields",
    "encode_event",
    "encode_events",
    "encode_header",
    "encode_tool_result",
    "escape_surrogates",
    "utcnow",
]

# -- events -----------------------------------------------------------------


class OutputFormat(BaseModel):
    """The structured output a run's final answer must match, kept with the run."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    name: str
    json_schema: dict[str, JSONValue]
    description: str = ""


class ForkOrigin(BaseModel):
    """The run and seq a fork copied its log from (`CreatedEvent.forked_from`)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    run_id: str
    seq: int


class CreatedEvent(_Event):
    """The run's input: system prompt and task. Always seq 1, state PENDING."""

    kind: Literal["created"] = "created"
    messages: tuple[Message, ...]
    output_format: OutputFormat | None = None
    forked_from: ForkOrigin | None = None
    """Set on a fork's first event; None (and left out of the JSON) otherwise, so
    older readers ignore it and older records read as not forked."""
    tools: tuple[ToolSignature, ...] | None = None
    """The tools the run was started with (None: written before schema version 2)."""


class TransitionEvent(_Event):
    """A transition with no payload of its own (start, tools_done, resume)."""

    kind: Literal["transition"] = "transition"


class ModelResponseEvent(_Event):
    """A model call's answer, recorded before anything else starts."""

    kind: Literal["model_response"] = "model_response"
    message: AssistantMessage
    model: str
    # A default made without validation: `Usage()` here would build Usage's
    # validator at import, which defer_build puts off to first use.
    usage: Usage = Usage.model_construct()
    attempt: int = 1
    latency_ms: float = 0.0
    repeated: bool = False
    """True when the run was resumed in MODEL_CALL: an earlier process recorded the
    intent of this call and may have sent it (its answer, if any, was lost), so the
    provider may have been asked twice."""


class ModelAttemptFailedEvent(_Event):
    """One failed attempt of a model call; the engine may retry."""

    kind: Literal["model_attempt_failed"] = "model_attempt_failed"
    attempt: int
    error: ErrorInfo
    retry_in: float | None = None


class ToolStartedEvent(_Event):
    """Intent: the tool call is about to start (DESIGN.md §3 rule 1).

    It names the tool as it was (`ToolSignature`'s hash and ``idempotent``, and
    the agent's version), so a resume can tell a changed tool; None in records
    written before schema version 2.
    """

    kind: Literal["tool_started"] = "tool_started"
    call_id: str
    name: str
    attempt: int = 1
    schema_hash: str | None = None
    idempotent: bool | None = None
    agent_version: str | None = None


class ToolFinishedEvent(_Event):
    """A tool call's result, durable before the next effect starts."""

    kind: Literal["tool_finished"] = "tool_finished"
    result: ToolResultMessage
    duration_ms: float = 0.0


class OutputRejectedEvent(_Event):
    """A refused model answer and the feedback sent back; the run stays in MODEL_CALL.

    Refused: a final answer that failed structured-output validation, or an
    answer that could not be stored (``error`` is an `UnstorableValueError`;
    ``message`` is then a stand-in: the answer's text with lone surrogates
    escaped and the names of its tool calls). The next model call sees both
    messages.
    """

    kind: Literal["output_rejected"] = "output_rejected"
    message: AssistantMessage
    feedback: UserMessage
    error: ErrorInfo
    model: str
    usage: Usage = Usage.model_construct()  # without validation, as above
    attempt: int = 1


RequirementKind: TypeAlias = Literal["confirmation", "external", "user_input", "in_doubt"]
"""Why a tool call waits for a human: approve it, run it yourself, provide fields,
or decide a call that may have run before a crash (non-idempotent tools)."""

DecisionAction: TypeAlias = Literal["confirm", "reject", "result", "input"]
"""What a human decided: run it (for in-doubt: run again), refuse it (in-doubt:
fail it), supply its result (in-doubt: skip it with that result), or give fields."""


class RequirementRecord(BaseModel):
    """One pending human decision about one tool call."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    kind: RequirementKind
    call_id: str
    tool_name: str
    arguments: Annotated[dict[str, JSONValue], Deep] = Field(default_factory=dict)
    fields: tuple[str, ...] = ()
    detail: str | None = None
    """Why an in-doubt call waits, when more than "it may have run": a changed tool."""


class WaitingEvent(_Event):
    """The run paused (``needs_human``) until every requirement is decided."""

    kind: Literal["waiting"] = "waiting"
    requirements: tuple[RequirementRecord, ...]


class DecisionEvent(_Event):
    """A human decision, recorded before anything it allows runs."""

    kind: Literal["decision"] = "decision"
    requirement_id: str
    action: DecisionAction
    reason: str | None = None
    value: Annotated[JSONValue, Deep] = None
    inputs: Annotated[dict[str, JSONValue], Deep] = Field(default_factory=dict)
    decided_by: str | None = None
    """Who decided, as the deciding surface named them (a ``--user`` label, a token name)."""


class CancelledEvent(_Event):
    """The run was cancelled (final)."""

    kind: Literal["cancelled"] = "cancelled"
    reason: str
    from_state: RunState


class FailedEvent(_Event):
    """The run stopped in ERROR; ``failed_state`` is where ``resume`` returns."""

    kind: Literal["failed"] = "failed"
    error: ErrorInfo
    failed_state: RunState
    call_id: str | None = None


Event: TypeAlias = Annotated[
    CreatedEvent
    | TransitionEvent
    | ModelResponseEvent
    | ModelAttemptFailedEvent
    | ToolStartedEvent
    | ToolFinishedEvent
    | OutputRejectedEvent
    | WaitingEvent
    | DecisionEvent
    | CancelledEvent
    | FailedEvent
    | ReconciledEvent,
    Field(discriminator="kind"),
]
"""One entry of a run's append-only log; ``kind`` tells which."""


class StoredRun(BaseModel):
    """A run as loaded from a store: its header and every event in ``seq`` order."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    header: RunHeader
    events: tuple[Event, ...]


# -- the one place of serialization ------------------------------------------

_EVENT: Final[TypeAdapter[Event]] = TypeAdapter(Event, config=ConfigDict(defer_build=True))
_HEADER: Final[TypeAdapter[RunHeader]] = TypeAdapter(RunHeader)


class CheckedEvents(list[Event]):
    """Events `check_events` passed, with the JSON text of each (``texts``, in order).

    What the engine hands to `Backend.append`: the check before an append *is*
    the encoding, so a store that asks `encode_events` for the texts gets them
    without serializing the events again (one walk and one serialization per
    event per append). The texts live exactly as long as the list, so nothing
    is kept past the append; a store that keeps event objects never reads them.
    A store must not change the list (nothing in the contract lets it).

    Why: the engine checks every event before an append and the store encodes
    the same event right after; sharing one serialization saved ~50,000
    instructions per transition in benchmark (b)'s workload (~16% of the
    engine's, valgrind), and carrying the texts on the list instead of in a
    cache keyed by ``id`` spares three dictionary operations per event.
    """

    __slots__ = ("texts",)

    texts: list[str]


def check_event(event: Event) -> None:
    """Raise `UnstorableValueError` if `encode_event` would refuse ``event``; write nothing."""
    _encode(event)


def check_events(events: Sequence[Event]) -> CheckedEvents:
    """``events`` with their texts, or `UnstorableValueError` for the first a store could not hold.

    The engine calls it before an append, so a refused value never reaches
    a store, whatever the store does with an error half-way through a write.
    """
    checked = CheckedEvents(events)
    checked.texts = [_encode(event) for event in checked]
    return checked


def encode_events(events: Sequence[Event]) -> list[str]:
    """`encode_event` of each event, in order: the texts `check_events` kept, if it made ``events``.

    Stores encode an append's events with it, so an append from the engine is
    serialized once.
    """
    if type(events) is CheckedEvents:
        texts = events.texts
        if len(texts) == len(events):
            return texts
    return [_encode(event) for event in events]


def encode_event(event: Event) -> str:
    """Serialize an event to compact JSON text that `decode_event` reads back equal.

    Raises `UnstorableValueError` (path and reason) for a value the decoder would
    refuse or change: deeper than `MAX_DEPTH`, NaN or infinity, a lone surrogate,
    something that is not JSON, or one call id used twice in an answer.

    Fields that are None are left out (every such field defaults to None, so
    the record reads back the same); it keeps the log ~3% smaller.
    """
    return _encode(event)


def _encode(event: Event) -> str:
    # Text is left to the serializer, which fails on a lone surrogate (the one
    # thing left it can fail on) at no extra cost; the walk looks at the rest,
    # and only at records that have something to look at.
    plan = _PLANS.get(type(event))
    if plan is None:
        plan = _plan_of(type(event))
    walk, serializer = plan
    if walk == _ANSWER:
        check_answer(event.message)  # type: ignore[union-attr]
        check_record(event, text=False, skip="message")
    elif walk == _RECORD:
        check_record(event, text=False)
    try:
        # The serializer itself: `model_dump_json`'s keyword plumbing costs a
        # fifth of the call.
        text: bytes = serializer.to_json(event, exclude_none=True)
    except PydanticSerializationError as exc:
        _unserializable(event, exc)
    return text.decode()


_NOTHING: Final = 0
_RECORD: Final = 1
_ANSWER: Final = 2
_PLANS: Final[dict[type[BaseModel], tuple[int, SchemaSerializer]]] = {}
"""Per event class, how `_encode` looks at it before serializing: not at all (nothing in it
can be unstorable, text aside), as a record (`check_record`), or as one carrying a model's
answer (``message``, checked as one by `check_answer`); and its serializer. Cached: an
``isinstance`` of a pydantic class costs ~0.2 us, a walk that finds nothing to look at ~1 us,
and so does reading an attribute of a pydantic class (its metaclass's ``__getattr__`` puts
every class attribute read through a Python-level hook: ~200 ns, a dict lookup ~30 ns)."""
_VALIDATORS: Final[dict[type[BaseModel], SchemaValidator]] = {}


def _plan_of(cls: type[BaseModel]) -> tuple[int, SchemaSerializer]:
    if issubclass(cls, ModelResponseEvent | OutputRejectedEvent):
        walk = _ANSWER
    else:
        walk = _NOTHING if nothing_to_check(cls) else _RECORD
    serializer = cls.__pydantic_serializer__
    if not isinstance(serializer, SchemaSerializer):  # not built yet (`defer_build`)
        cls.model_rebuild()
        serializer = cls.__pydantic_serializer__
    assert isinstance(serializer, SchemaSerializer)
    plan = _PLANS[cls] = (walk, serializer)
    return plan


def validator_of(cls: type[BaseModel]) -> SchemaValidator:
    """``cls.__pydantic_validator__``, built if need be, from a cache.

    What ``cls(**data)`` calls, for the hot path to call it itself: the
    ``__init__`` around it is a fifth of the cost, and reading it from the class
    costs as much as a dict lookup six times (see `_PLANS`).
    """
    validator = _VALIDATORS.get(cls)
    if validator is None:
        found = cls.__pydantic_validator__
        if not isinstance(found, SchemaValidator):  # not built yet (`defer_build`)
            cls.model_rebuild()
            found = cls.__pydantic_validator__
        assert isinstance(found, SchemaValidator)
        validator = _VALIDATORS[cls] = found
    return validator


def encode_header(header: RunHeader) -> str:
    """Serialize a header to compact JSON text; `UnstorableValueError` as `encode_event`."""
    check_record(header, text=False)
    try:
        return header.model_dump_json()
    except PydanticSerializationError as exc:
        _unserializable(header, exc)


def _unserializable(record: BaseModel, exc: PydanticSerializationError) -> NoReturn:
    # Text is only checked when the serializer fails (a lone surrogate is the
    # one thing left it can fail on), so valid records pay nothing for it.
    check_record(record, text=True)
    raise UnstorableValueError("", escape_surrogates(str(exc))) from exc


def decode_event(run_id: str, seq: int | None, text: str | bytes) -> Event:
    """Parse one stored event, raising `CorruptRunError` naming ``run_id`` and ``seq``.

    ``seq`` is where the store found the record (for the message); the event's
    own ``seq`` must match it. A record of an older schema version is read
    through the upcasters (`durable_agent._upcast`).
    """
    event = read_record(_EVENT, upcast_event, run_id, seq, text)
    if seq is not None and event.seq != seq:
        raise CorruptRunError(run_id, seq, f"event says seq {event.seq}")
    return event


def decode_header(run_id: str, text: str | bytes) -> RunHeader:
    """Parse a stored header, raising `CorruptRunError` naming ``run_id``."""
    return read_record(_HEADER, upcast_header, run_id, None, text)


def decode_header_fields(run_id: str, fields: Mapping[str, object]) -> RunHeader:
    """Build a header from its fields as a store keeps them apart (a row, a Redis hash).

    Like `decode_header`: a newer ``schema_version`` raises `SchemaVersionError`,
    anything that does not validate `CorruptRunError` naming ``run_id``.
    ``fields`` holds `RunHeader`'s field names; ``lease`` is a mapping or None.
    """
    check_version(run_id, None, dict(fields))
    try:
        return RunHeader.model_validate(upcast_header(dict(fields)))  # type: ignore[arg-type]
    except ValidationError as exc:
        raise CorruptRunError(run_id, None, short_error(exc)) from exc
