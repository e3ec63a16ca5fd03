"""The live hook: spans, metrics and DEBUG logs of one segment of one run.

Spans follow the OpenTelemetry GenAI conventions: ``invoke_agent {agent}`` per
segment (linked to the previous segment's span through the ``traceparent``
stored with that segment's first write), ``chat {model}`` per model attempt and
``execute_tool {tool}`` per tool call, children of the segment's span
(`durable_agent.telemetry._calls`). A segment a worker drives says which worker,
queue and kind of claim, and when the worker releases it at a stop. Each
store append is an event on the segment span; so are retries, takeovers,
recoveries, waits, decisions, cancellations and failures, read from the events
appended. Contents are recorded only with capture on (`_content`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from durable_agent.fsm import RunState
from durable_agent.telemetry import _content
from durable_agent.telemetry._calls import ChatSpan, ToolSpan, error_type, fail, provider_name
from durable_agent.telemetry._hook import (
    _AT_REST,
    _MID_EFFECT,
    WORKER_CLAIM,
    Call,
    Hook,
    WorkerClaim,
    log_extra,
)

if TYPE_CHECKING:
    from opentelemetry import context as otel_context

    from durable_agent.models import ChatModel
    from durable_agent.records import Event, Lease, StoredRun, ToolCallPart
    from durable_agent.run import RunContext
    from durable_agent.telemetry._otel import Instruments

__all__ = ["LiveHook", "error_type", "parse_traceparent", "provider_name", "traceparent"]

_log = logging.getLogger("durable_agent.engine")


def traceparent(span: trace.Span) -> str | None:
    """The W3C traceparent of ``span``, or None for a span that is not sampled in."""
    sc = span.get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def parse_traceparent(value: str) -> SpanContext | None:
    """The span context a stored traceparent names (None for one that is not well formed)."""
    parts = value.split("-")
    try:
        if len(parts) != 4 or parts[0] != "00":
            return None
        sc = SpanContext(
            trace_id=int(parts[1], 16),
            span_id=int(parts[2], 16),
            is_remote=True,
            trace_flags=TraceFlags(int(parts[3], 16)),
        )
    except ValueError:
        return None
    return sc if sc.is_valid else None


_NO_CALL = Call()


class LiveHook(Hook):
    """The hook of a segment when telemetry is on (``instruments`` None: DEBUG logs only)."""

    __slots__ = ("_claim", "_debug", "_failed", "_link", "_seq_start", "_span", "instruments")

    def __init__(self, run_id: str, agent: str, instruments: Instruments | None) -> None:
        super().__init__(run_id, agent)
        self.instruments = instruments
        self._claim: WorkerClaim | None = None
        self._debug = _log.isEnabledFor(logging.DEBUG)
        self._span: trace.Span | None = None
        self._link: SpanContext | None = None
        self._seq_start = 0
        self._failed = False

    def parent(self) -> otel_context.Context | None:
        """The context a call's span starts in: under the segment span."""
        if self._span is None:
            return None
        return trace.set_span_in_context(self._span)

    def loaded(self, stored: StoredRun) -> None:
        if self.instruments is None or self.instruments.tracer is None:
            return
        for event in reversed(stored.events):
            if event.traceparent is not None:
                self._link = parse_traceparent(event.traceparent)
                return

    def begin(self, ctx: RunContext | None, lease: Lease | None) -> str | None:
        super().begin(ctx, lease)
        instruments = self.instruments
        if instruments is None:
            return None
        agent = {"gen_ai.agent.name": self.agent}
        state = ctx.state if ctx is not None else RunState.PENDING
        claim = WORKER_CLAIM.get()
        if claim is not None and claim.run_id != self.run_id:
            claim = None  # a run inside a tool of the worker's run: not claimed by it
        self._claim = claim
        # A worker knows whether its claim took the run from a holder that stopped; a
        # run it claims unheld in MODEL_CALL was handed back by a stopping worker.
        takeover = claim.kind == "takeover" if claim is not None else state in _MID_EFFECT
        if ctx is None:
            instruments.runs_started.add(1, agent)
        elif takeover:
            instruments.takeovers.add(1, agent)
        tracer = instruments.tracer
        if tracer is None:
            return None
        self._seq_start = ctx.seq if ctx is not None else 0
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self.agent,
            "gen_ai.conversation.id": self.run_id,
            "durable_agent.run.id": self.run_id,
            "durable_agent.run.state.start": state.value,
            "durable_agent.run.seq.start": self._seq_start,
            "durable_agent.segment.resumed": ctx is not None,
        }
        if lease is not None:
            attributes["durable_agent.lease.generation"] = lease.generation
        if ctx is not None and ctx.session_id is not None:
            attributes["durable_agent.session.id"] = ctx.session_id
        if claim is not None:
            attributes["durable_agent.worker.id"] = claim.worker_id
            attributes["durable_agent.queue"] = claim.queue
            attributes["durable_agent.claim.kind"] = claim.kind
        links = (
            [Link(self._link, {"durable_agent.run.id": self.run_id,
                               "durable_agent.link.type": "previous_segment"})]
            if self._link is not None
            else None
        )
        span = tracer.start_span(
            f"invoke_agent {self.agent}", kind=SpanKind.INTERNAL, attributes=attributes,
            links=links,
        )
        if ctx is not None and takeover:
            event: dict[str, Any] = {
                "durable_agent.run.state": state.value, "durable_agent.run.seq": ctx.seq,
            }
            if claim is not None:
                event["durable_agent.claim.kind"] = claim.kind
                if claim.previous_owner is not None:
                    event["durable_agent.lease.previous_owner"] = claim.previous_owner
                if claim.previous_generation is not None:
                    event["durable_agent.lease.previous_generation"] = claim.previous_generation
            span.add_event("durable_agent.takeover", event)
        elif ctx is not None and state is RunState.ERROR:
            span.add_event("durable_agent.recovery", {
                "durable_agent.run.failed_state": getattr(ctx.failed_state, "value", ""),
                "error.type": ctx.error.type if ctx.error is not None else "",
            })
        if claim is not None and claim.kind == "retry":
            span.add_event("durable_agent.run_retry", {
                "durable_agent.run_retry.number": claim.retry or 0,
                "durable_agent.run_retry.attempts": claim.retries or 0,
                "durable_agent.run.failed_state": getattr(
                    getattr(ctx, "failed_state", None), "value", ""
                ),
            })
        self._span = span
        return traceparent(span)

    def end(self, ctx: RunContext | None, error: BaseException | None = None) -> None:
        if not self._began:
            return
        super().end(ctx, error)
        span, self._span = self._span, None
        if span is None:
            return
        if ctx is not None:
            span.set_attributes(
                {"durable_agent.run.state": ctx.state.value, "durable_agent.run.seq.end": ctx.seq}
            )
            claim = self._claim
            if claim is not None and claim.stopping():
                # The worker stops: it leaves the run for the fleet between two steps (no
                # effect cut), or cuts it when its grace passed (the interruption is
                # recorded, ERROR, and the worker hands it back; a failed hand-over is
                # logged at WARNING).
                kind = (
                    "stop" if error is None and ctx.state not in _AT_REST
                    else "cut" if isinstance(error, asyncio.CancelledError)
                    else None
                )
                if kind is not None:
                    span.add_event("durable_agent.worker.release", {
                        "durable_agent.release.kind": kind,
                        "durable_agent.run.state": ctx.state.value,
                        "durable_agent.run.seq": ctx.seq,
                    })
        if error is not None and not self._failed:
            fail(span, error, self.instruments is not None and self.instruments.capture_content)
        span.end()

    # -- appends -------------------------------------------------------------------

    def append_start(self) -> float | None:
        return time.perf_counter()

    def appended(
        self, mark: float | None, ctx: RunContext, events: Sequence[Event], released: bool
    ) -> None:
        instruments = self.instruments
        run_id = self.run_id
        if self._debug:
            for event in events:
                if event.trigger is not None:
                    _log.debug("run %s: %s -> %s at seq %d", run_id, event.trigger,
                               event.state.value, event.seq,
                               extra=log_extra(run_id, event.seq, event.state, agent=self.agent))
        if instruments is None:
            return
        agent = self.agent
        elapsed = time.perf_counter() - mark if mark is not None else 0.0
        instruments.append_duration.record(elapsed, {"gen_ai.agent.name": agent})
        batch = instruments.batches.pop(run_id) if instruments.batches.sizes else None
        for event in events:
            if event.trigger is not None:
                instruments.transitions.add(
                    1, {"gen_ai.agent.name": agent, "durable_agent.trigger": event.trigger}
                )
        last = events[-1]
        if released:  # the write that brings a run to rest gives its lease up
            instruments.runs_finished.add(
                1, {"gen_ai.agent.name": agent, "durable_agent.run.state": last.state.value}
            )
        span = self._span
        if span is None or not span.is_recording():
            self._count_rejections(instruments, events)
            return
        size = sum(len(e.__pydantic_serializer__.to_json(e, exclude_none=True)) for e in events)
        attributes: dict[str, Any] = {
            "durable_agent.seq.first": events[0].seq,
            "durable_agent.seq.last": last.seq,
            "durable_agent.append.events": len(events),
            "durable_agent.append.bytes": size,
            "durable_agent.append.duration_s": elapsed,
            "durable_agent.run.state": last.state.value,
        }
        if batch is not None:
            attributes["durable_agent.store.batch_size"] = batch
        span.add_event("durable_agent.append", attributes)
        for event in events:
            self._on_event(instruments, span, event)

    def _count_rejections(self, instruments: Instruments, events: Sequence[Event]) -> None:
        for event in events:
            if event.kind == "output_rejected":
                instruments.attempts_failed.add(1, {
                    "gen_ai.agent.name": self.agent, "error.type": event.error.type,
                })

    def _on_event(self, instruments: Instruments, span: trace.Span, event: Event) -> None:
        """Retries, waits, decisions, cancellations and failures as span events."""
        capture = instruments.capture_content
        match event.kind:
            case "model_attempt_failed":
                span.add_event("durable_agent.retry", {
                    "durable_agent.attempt": event.attempt,
                    "error.type": event.error.type,
                    "durable_agent.retry.delay_s": event.retry_in or 0.0,
                })
            case "output_rejected":
                self._count_rejections(instruments, (event,))
                span.add_event("durable_agent.output_rejected", {
                    "durable_agent.attempt": event.attempt, "error.type": event.error.type,
                })
            case "waiting":
                span.add_event("durable_agent.wait", {
                    "durable_agent.requirements": len(event.requirements),
                    "durable_agent.requirement.kinds": tuple(r.kind for r in event.requirements),
                    "gen_ai.tool.name": tuple(r.tool_name for r in event.requirements),
                })
            case "decision":
                span.add_event("durable_agent.decision", {"durable_agent.decision": event.action})
            case "cancelled":
                attributes: dict[str, Any] = {"durable_agent.run.state": event.from_state.value}
                if capture:
                    attributes["durable_agent.cancel.reason"] = _content.text(event.reason)
                span.add_event("durable_agent.cancel", attributes)
            case "failed":
                self._failed = True
                span.add_event("durable_agent.failure", {
                    "error.type": event.error.type,
                    "durable_agent.run.failed_state": event.failed_state.value,
                })
                span.set_attribute("error.type", event.error.type)
                description = _content.text(event.error.message) if capture else event.error.type
                span.set_status(Status(StatusCode.ERROR, description))
            case _:
                pass

    def append_failed(
        self, mark: float | None, events: Sequence[Event], error: BaseException
    ) -> None:
        instruments = self.instruments
        if instruments is None:
            return
        kind = error_type(error)
        elapsed = time.perf_counter() - mark if mark is not None else 0.0
        instruments.append_duration.record(
            elapsed, {"gen_ai.agent.name": self.agent, "error.type": kind}
        )
        if self._span is not None:
            self._span.add_event("durable_agent.append_failed", {
                "durable_agent.seq.first": events[0].seq if events else 0, "error.type": kind,
            })

    # -- calls ---------------------------------------------------------------------

    def chat(self, ctx: RunContext, model: ChatModel, attempt: int) -> Call:
        if self.instruments is None:
            return _NO_CALL
        return ChatSpan(self, self.instruments, ctx, model, attempt)

    def tool(self, ctx: RunContext, call: ToolCallPart, attempt: int) -> Call:
        if self.instruments is None:
            return _NO_CALL
        return ToolSpan(self, self.instruments, call, attempt)
