"""A run rebuilt from its events, and the `RunOutput` callers receive.

`RunContext.apply` is the one fold from events to context: the engine applies
each event after the store accepted it, and loading a run applies the stored
events the same way, so a resumed run is the same object an uninterrupted one
would be.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel

from durable_agent.diagram import Diagram, DiagramFormat, RunPath, Step, run_diagram
from durable_agent.fsm import RunState, restore_state
from durable_agent.human import Requirement
from durable_agent.records import (
    AssistantMessage,
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    ErrorInfo,
    Event,
    FailedEvent,
    Message,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputFormat,
    OutputRejectedEvent,
    ReconciledEvent,
    RequirementRecord,
    RunHeader,
    StoredRun,
    ToolCallPart,
    ToolFinishedEvent,
    ToolStartedEvent,
    TransitionEvent,
    Usage,
    WaitingEvent,
)

__all__ = ["RunContext", "RunOutput"]

_NO_USAGE = Usage()
"""Nothing spent yet (`Usage` is frozen, so one instance serves every pending run)."""


@dataclass
class RunContext:
    """Everything the engine needs to decide a run's next step."""

    run_id: str
    session_id: str | None = None
    user_id: str | None = None
    state: RunState = RunState.PENDING
    seq: int = 0
    failed_state: RunState | None = None
    messages: list[Message] = field(default_factory=list)
    pending_calls: dict[str, ToolCallPart] = field(default_factory=dict)
    """Tool calls of the last model answer that have no recorded result, in order."""
    calls_seq: int = 0
    """The seq of the model answer that asked for ``pending_calls`` (idempotency keys)."""
    call_attempts: dict[str, int] = field(default_factory=dict)
    """How many intents each pending call has recorded."""
    output: str | None = None
    error: ErrorInfo | None = None
    usage: Usage = field(default_factory=Usage)
    events: int = 0
    output_format: OutputFormat | None = None
    requirements: dict[str, RequirementRecord] = field(default_factory=dict)
    """Requirements raised since the last model answer, by id."""
    decisions: dict[str, DecisionEvent] = field(default_factory=dict)
    """Decisions about ``requirements``, by requirement id."""
    cancel_reason: str | None = None
    steps: list[Step] = field(default_factory=list)
    """Every transition the run took, in order (for its path diagram)."""
    failed_calls: set[str] = field(default_factory=set)
    """Pending calls whose last attempt raised (recorded): their outcome is known."""
    call_intents: dict[str, ToolStartedEvent] = field(default_factory=dict)
    """The latest intent of each pending call (it names the tool as it was)."""
    reconciled: dict[str, ReconciledEvent] = field(default_factory=dict)
    """The latest reconcile answer about each pending call."""

    @property
    def open_requirements(self) -> dict[str, RequirementRecord]:
        """Requirements still waiting for a decision."""
        return {k: r for k, r in self.requirements.items() if k not in self.decisions}

    @classmethod
    def from_stored(cls, stored: StoredRun) -> RunContext:
        """Rebuild a run from its header and events, checking the stored state."""
        header = stored.header
        ctx = cls(run_id=header.run_id, session_id=header.session_id, user_id=header.user_id)
        ctx.apply_all(stored.events)
        # The header's state is denormalized from the last event; the log wins.
        restore_state(ctx.state.value)
        return ctx

    @classmethod
    def from_header(cls, header: RunHeader) -> RunContext:
        """An empty context for a run about to be created."""
        return cls(run_id=header.run_id, session_id=header.session_id, user_id=header.user_id)

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply events in order."""
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        """Fold one event into the context (the only place events change a context)."""
        if event.trigger is not None:
            self.steps.append(Step(event.seq, event.trigger, self.state, event.state))
        self.seq = event.seq
        self.state = event.state
        self.events += 1
        match event:
            case CreatedEvent():
                self.messages.extend(event.messages)
                self.output_format = event.output_format
            case ModelResponseEvent():
                self.messages.append(event.message)
                self.usage = self.usage + event.usage
                self.pending_calls = {c.id: c for c in event.message.tool_calls}
                self.call_attempts = {}
                self.requirements = {}
                self.decisions = {}
                self.failed_calls = set()
                self.call_intents = {}
                self.reconciled = {}
                self.calls_seq = event.seq
                self.failed_state = None
                self.error = None
                if event.state is RunState.DONE:
                    self.output = event.message.content or ""
            case ToolStartedEvent():
                self.call_attempts[event.call_id] = event.attempt
                self.call_intents[event.call_id] = event
                self.failed_calls.discard(event.call_id)
            case ToolFinishedEvent():
                self.messages.append(event.result)
                self.pending_calls.pop(event.result.call_id, None)
            case FailedEvent():
                self.failed_state = event.failed_state
                self.error = event.error
                if event.failed_state is RunState.MODEL_CALL:
                    # The attempt that failed the run was a request too.
                    self.usage = self.usage + Usage(requests=1)
                if event.call_id is not None:
                    self.failed_calls.add(event.call_id)
            case OutputRejectedEvent():
                self.messages.extend((event.message, event.feedback))
                self.usage = self.usage + event.usage
            case WaitingEvent():
                self.requirements.update((r.id, r) for r in event.requirements)
            case DecisionEvent():
                self.decisions[event.requirement_id] = event
            case CancelledEvent():
                self.cancel_reason = event.reason
            case ModelAttemptFailedEvent():
                self.usage = self.usage + Usage(requests=1)
            case ReconciledEvent():
                self.reconciled[event.call_id] = event
            case TransitionEvent():
                if event.trigger == "resume":
                    self.error = None

    @property
    def last_answer(self) -> AssistantMessage | None:
        """The most recent assistant message, if any."""
        for message in reversed(self.messages):
            if isinstance(message, AssistantMessage):
                return message
        return None


@dataclass(frozen=True)
class RunOutput:
    """What a run produced, or where it stands.

    ``output`` is the final answer once ``state`` is DONE. ``error`` is the
    recorded failure while the run is in ERROR; ``failed_state`` is where a
    continue resumes. ``history_length`` counts the stored events. ``parsed``
    is the structured answer when the task had a ``response_format``.
    """

    run_id: str
    state: RunState
    output: str | None
    messages: tuple[Message, ...]
    usage: Usage
    error: ErrorInfo | None
    failed_state: RunState | None
    history_length: int
    session_id: str | None = None
    user_id: str | None = None
    parsed: BaseModel | None = None
    """The final answer as the task's ``response_format`` instance, when it has one."""
    requirements: tuple[Requirement, ...] = ()
    """The open requirements while the run is WAITING: decide them and continue."""
    steps: tuple[Step, ...] = ()
    """Every transition the run took, in order."""

    def diagram(self, *, format: DiagramFormat = "mermaid") -> Diagram:
        """The path this run took through the machine (Mermaid, DOT, SVG or PNG).

        A notebook shows the returned `Diagram` as a picture.
        """
        return run_diagram(RunPath(self.steps, self.state, self.run_id), format=format)

    @classmethod
    def pending(cls, run_id: str, session_id: str | None, user_id: str | None) -> RunOutput:
        """A run about to be created: what ``from_context`` of its empty context gives.

        Built directly: it is set before a run's first write, on the way to its
        first model call, where an empty `RunContext` would be built only to be read.
        """
        return cls(
            run_id=run_id,
            state=RunState.PENDING,
            output=None,
            messages=(),
            usage=_NO_USAGE,
            error=None,
            failed_state=None,
            history_length=0,
            session_id=session_id,
            user_id=user_id,
        )

    @classmethod
    def from_context(cls, ctx: RunContext) -> RunOutput:
        """Snapshot a context."""
        return cls(
            run_id=ctx.run_id,
            state=ctx.state,
            output=ctx.output,
            messages=tuple(ctx.messages),
            usage=ctx.usage,
            error=ctx.error,
            failed_state=ctx.failed_state,
            history_length=ctx.events,
            session_id=ctx.session_id,
            user_id=ctx.user_id,
            requirements=tuple(Requirement(r) for r in ctx.open_requirements.values()),
            steps=tuple(ctx.steps),
        )
