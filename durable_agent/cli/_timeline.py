"""`durable-agent runs show`: a stored run's events as a readable timeline.

One row per event: its ``seq``, time, the transition it recorded (if any),
its kind and a one-line detail — the model call (model, tokens, latency,
attempt, what it asked for), each tool call (name, abridged arguments,
duration, result or error; with ``full``, the tool's identity as the intent
recorded it), reconcile answers, in-doubt calls with what changed about their
tool, human decisions and errors with type and message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from durable_agent.cli._output import abridge
from durable_agent.fsm import RunState
from durable_agent.records import (
    AssistantMessage,
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    ErrorInfo,
    Event,
    FailedEvent,
    JSONValue,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputRejectedEvent,
    ReconciledEvent,
    StoredRun,
    SystemMessage,
    ToolCallPart,
    ToolFinishedEvent,
    ToolStartedEvent,
    TransitionEvent,
    UserMessage,
    WaitingEvent,
)

__all__ = ["Row", "describer", "error_text", "timeline"]

ARGUMENTS_WIDTH = 60
TEXT_WIDTH = 70


@dataclass(frozen=True, slots=True)
class Row:
    """One event, described."""

    seq: int
    at: datetime
    kind: str
    trigger: str | None
    source: RunState
    state: RunState
    detail: str

    @property
    def transition(self) -> str:
        """``PENDING → MODEL_CALL``, or empty when the event moved nothing."""
        return f"{self.source.value} → {self.state.value}" if self.trigger else ""


def timeline(run: StoredRun, *, full: bool = False) -> list[Row]:
    """The rows of ``run``'s events in ``seq`` order; ``full`` turns abridging off."""
    describe = _Describer(full=full)
    rows: list[Row] = []
    state = RunState.PENDING
    for event in run.events:
        rows.append(
            Row(
                seq=event.seq,
                at=event.at,
                kind=event.kind,
                trigger=event.trigger,
                source=state,
                state=event.state,
                detail=describe(event),
            )
        )
        state = event.state
    return rows


def error_text(error: ErrorInfo) -> str:
    """``ModelHTTPError: HTTP 503: …`` — the exception's class name and message."""
    return f"{error.type.rsplit('.', 1)[-1]}: {error.message}"


def _json(value: JSONValue) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


class _Describer:
    """Remembers the tool calls each model answer asked for, to name them later."""

    def __init__(self, *, full: bool) -> None:
        self.full = full
        self.calls: dict[str, ToolCallPart] = {}

    def cut(self, text: str, width: int = TEXT_WIDTH) -> str:
        return " ".join(text.split()) if self.full else abridge(text, width)

    def call(self, name: str, arguments: Mapping[str, JSONValue]) -> str:
        inner = ", ".join(f"{k}={_json(v)}" for k, v in arguments.items())
        return f"{name}({self.cut(inner, ARGUMENTS_WIDTH)})"

    def answer(self, message: AssistantMessage) -> str:
        if message.tool_calls:
            return "calls " + ", ".join(self.call(c.name, c.arguments) for c in message.tool_calls)
        return f'answer "{self.cut(message.content or "")}"'

    def __call__(self, event: Event) -> str:
        match event:
            case CreatedEvent():
                task = next((m.content for m in event.messages if isinstance(m, UserMessage)), "")
                parts = [f'task "{self.cut(task)}"']
                if any(isinstance(m, SystemMessage) for m in event.messages):
                    parts.append("with a system prompt")
                if event.output_format is not None:
                    parts.append(f"output format {event.output_format.name}")
                return ", ".join(parts)
            case TransitionEvent():
                return {
                    "start": "the first model call may start",
                    "tools_done": "every tool result is recorded",
                    "resume": "resumed after the recorded failure",
                }.get(event.trigger or "", "")
            case ModelResponseEvent():
                self.calls = {c.id: c for c in event.message.tool_calls}
                usage = event.usage
                parts = [
                    event.model,
                    f"{usage.input_tokens}+{usage.output_tokens} tokens",
                    f"{event.latency_ms:.0f} ms",
                    f"attempt {event.attempt}",
                ]
                again = " (asked again after a crash)" if event.repeated else ""
                return f"{' · '.join(parts)} → {self.answer(event.message)}{again}"
            case ModelAttemptFailedEvent():
                retry = f"; retry in {event.retry_in:.2f} s" if event.retry_in is not None else ""
                return f"attempt {event.attempt} failed: {self.cut(error_text(event.error))}{retry}"
            case ToolStartedEvent():
                part = self.calls.get(event.call_id)
                call = self.call(event.name, part.arguments if part else {})
                attempt = f", attempt {event.attempt}" if event.attempt > 1 else ""
                tags = [f"schema {event.schema_hash}"] if event.schema_hash else []
                if event.idempotent is False:
                    tags.append("not idempotent")
                if event.agent_version is not None:
                    tags.append(f"agent {event.agent_version}")
                tool = f" · {', '.join(tags)}" if tags and self.full else ""
                return f"{call} [{event.call_id}{attempt}]{tool}"
            case ToolFinishedEvent():
                result = event.result
                outcome = "error" if result.is_error else "→"
                took = f"{event.duration_ms:.0f} ms"
                return f"{result.name} {outcome} {self.cut(result.content)} · {took}"
            case OutputRejectedEvent():
                return f"answer rejected: {self.cut(error_text(event.error))}"
            case WaitingEvent():
                waits = [
                    f"{r.id} ({r.kind}: {self.call(r.tool_name, r.arguments)})"
                    + (f": {self.cut(r.detail, 2 * TEXT_WIDTH)}" if r.detail else "")
                    for r in event.requirements
                ]
                return "waits for " + "; ".join(waits)
            case ReconciledEvent():
                answer = {"landed": "it took effect (its result is recorded)",
                          "not_landed": "it did not take effect (it runs now)",
                          "unknown": "cannot tell"}[event.answer]
                where = f"{event.call_id}, attempt {event.attempt}"
                return f"reconciled {event.name} [{where}]: {answer}"
            case DecisionEvent():
                return f"{event.requirement_id}: {self._decision(event)}"
            case CancelledEvent():
                return f"cancelled in {event.from_state.value}: {self.cut(event.reason)}"
            case FailedEvent():
                where = f"in {event.failed_state.value}"
                if event.call_id is not None:
                    where += f", call {event.call_id}"
                return f"{self.cut(error_text(event.error))} ({where})"
        return ""  # pragma: no cover - every kind is matched above

    def _decision(self, event: DecisionEvent) -> str:
        match event.action:
            case "confirm":
                return "approved"
            case "reject":
                return f"rejected: {self.cut(event.reason)}" if event.reason else "rejected"
            case "result":
                return f"result given: {self.cut(_json(event.value))}"
            case "input":
                return f"input given: {self.cut(_json(dict(event.inputs)))}"


def describer(*, full: bool = False) -> Callable[[Event], str]:
    """One event's detail, for events that arrive one at a time (``runs follow``)."""
    return _Describer(full=full)
