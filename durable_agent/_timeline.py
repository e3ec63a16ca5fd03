"""A stored run's events as a readable timeline, with where its process changed.

One row per event: its ``seq``, time, the transition it recorded (if any),
its kind and a one-line detail — the model call (model, tokens, latency,
attempt, what it asked for), each tool call (name, abridged arguments,
duration, result or error; with ``full``, the tool's identity as the intent
recorded it), reconcile answers, in-doubt calls with what changed about their
tool, human decisions and errors with type and message.

`markers` finds where the run changed hands: a process that left the run
mid-step (MODEL_CALL, TOOL_EXEC) and another that took it over (a crash when
the first is gone, a takeover when it may still live), and a process that
continued a run at rest (a handover: after a decision, after an error). It
reads the ``lease_taken`` stamps of the log; a log written before them still
shows where a call had to be repeated.

The command line (``runs show``), the inspector page and ``--json`` all read
runs through this module and `durable_agent._inspect`, so they say the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, assert_never

from durable_agent._process import describe_owner, host_id, process_alive
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

__all__ = [
    "Marker",
    "Owner",
    "Row",
    "abridge",
    "describer",
    "error_text",
    "markers",
    "owner_of",
    "timeline",
]

ARGUMENTS_WIDTH = 60
TEXT_WIDTH = 70


def abridge(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    if width <= 0 or len(flat) <= width:
        return flat
    return flat[: max(width - 1, 0)] + "…"


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


# -- owners ------------------------------------------------------------------------------------

OwnerStatus = Literal["this process", "alive", "gone", "unknown"]
"""Whether a lease owner's process lives; ``unknown`` for a process of another host."""


@dataclass(frozen=True, slots=True)
class Owner:
    """A lease owner id (``host:pid:nonce``) taken apart, and in words."""

    id: str
    host: str
    pid: int | None
    status: OwnerStatus
    words: str
    """``process 4242 on this host (build-7, gone)``: what the CLI and the page print."""


def owner_of(owner_id: str) -> Owner:
    """Take an owner id apart; liveness is known only for a process of this host."""
    host, sep, pid_text = owner_id.rpartition(":")[0].rpartition(":")
    if not sep or not pid_text.isdigit():
        return Owner(owner_id, "?", None, "unknown", describe_owner(owner_id))
    pid = int(pid_text)
    status: OwnerStatus = "unknown"
    if host == host_id():
        status = "this process" if pid == os.getpid() else "alive" if process_alive(pid) else "gone"
    return Owner(owner_id, host.split("~pidns", 1)[0], pid, status, describe_owner(owner_id))


# -- where the run changed hands ---------------------------------------------------------------

MarkerKind = Literal["crash", "takeover", "handover", "interrupted"]
"""crash: the process that left the run mid-step is gone; takeover: it may still live
(another host, or its lease expired); handover: a new process continued a run at rest;
interrupted: an older log, with no owners recorded, repeats a call here."""

_AT_REST: Final = frozenset({RunState.PENDING, RunState.WAITING, RunState.ERROR})
"""States a run is left in on purpose; a new owner after one of them is a handover."""


@dataclass(frozen=True, slots=True)
class Marker:
    """A place in the log where the run changed hands, before event ``seq``."""

    seq: int
    kind: MarkerKind
    left_in: RunState
    """The state the run was in when the earlier process stopped writing."""
    previous_owner: str | None
    owner: str | None
    stranded_seconds: float | None
    """From the earlier process's last event until the new one took the lease."""

    @property
    def previous_process(self) -> str | None:
        """The earlier owner in words: its pid, host and whether it is alive or gone."""
        return describe_owner(self.previous_owner) if self.previous_owner else None

    @property
    def process(self) -> str | None:
        """The new owner in words."""
        return describe_owner(self.owner) if self.owner else None

    @property
    def text(self) -> str:
        """One line saying what happened, in words a user understands."""
        before = self.previous_process or "an earlier process"
        after = self.process or "a new process"
        waited = (
            f" after {self.stranded_seconds:.1f} s stranded"
            if self.stranded_seconds is not None and self.kind != "handover"
            else ""
        )
        match self.kind:
            case "crash":
                return (
                    f"CRASH: {before} stopped in {self.left_in.value}; "
                    f"{after} took the run over{waited}"
                )
            case "takeover":
                return (
                    f"TAKEOVER: {before} stopped writing in {self.left_in.value} (its lease "
                    f"was taken); {after} took the run over{waited}"
                )
            case "handover":
                return f"continued by {after} (the run was {self.left_in.value})"
            case "interrupted":
                return (
                    f"INTERRUPTED: the process running it stopped in {self.left_in.value} "
                    "and a later one repeated the call (no owners recorded in this log)"
                )
        assert_never(self.kind)


def markers(run: StoredRun) -> list[Marker]:
    """Where ``run`` changed hands, in ``seq`` order (see the module docstring)."""
    found: list[Marker] = []
    owner: str | None = None
    state = RunState.PENDING
    last_at = None
    open_calls: set[str] = set()
    repeating = False
    for event in run.events:
        stamp = event.lease_taken
        if stamp is not None:
            if owner is not None and stamp.owner != owner:
                stranded = (stamp.at - last_at).total_seconds() if last_at else None
                kind: MarkerKind = "handover"
                if state not in _AT_REST and state not in (RunState.DONE, RunState.CANCELLED):
                    kind = "crash" if owner_of(owner).status == "gone" else "takeover"
                found.append(
                    Marker(event.seq, kind, state, owner, stamp.owner, _rounded(stranded))
                )
            owner = stamp.owner
        elif owner is None and _repeats_a_call(event, open_calls):
            # A log without stamps (written before them): a repeated call is the
            # trace a restart leaves; the calls it repeats together get one marker.
            if not repeating:
                found.append(Marker(event.seq, "interrupted", state, None, None, None))
            repeating = True
        else:
            repeating = False
        match event:
            case ToolStartedEvent():
                open_calls.add(event.call_id)
            case ToolFinishedEvent():
                open_calls.discard(event.result.call_id)
            case FailedEvent():
                open_calls.clear()
            case _:
                pass
        state, last_at = event.state, event.at
    return found


def _repeats_a_call(event: Event, open_calls: set[str]) -> bool:
    if isinstance(event, ModelResponseEvent):
        return event.repeated
    return isinstance(event, ToolStartedEvent) and event.call_id in open_calls


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(seconds, 0.0), 3)
def describer(*, full: bool = False) -> Callable[[Event], str]:
    """One event's detail, for events that arrive one at a time (``runs follow``)."""
    return _Describer(full=full)
