"""The state of one run execution, and how it records (DESIGN.md §3 rules 1, 2, 5 and 7).

`ExecutionCore` holds what an execution knows: the run's context as applied so
far, the lease it writes under and the lock that orders its appends. Its
methods are the only way an execution writes: `_append` builds events after the
current seq and appends them with the lease (the write that brings a run to
rest releases the lease in the same step); `_record_interruption` writes the
ERROR of a deadline or cancellation, reloading first when an append was cut
short; `_keepalive` has the loop's heartbeat renew the lease while one effect
outlasts a third of its TTL (a renewal that failed is raised at the next append,
`_judge_heartbeat_error`). The steps (`durable_agent._model_step`,
`durable_agent._tool_step`) and the lifecycle (`durable_agent.engine.RunExecution`) build on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from durable_agent._heartbeat import Effect
from durable_agent._stream_hooks import recorded
from durable_agent.backend import Backend
from durable_agent.errors import StoreUnavailableError
from durable_agent.fsm import RunState, next_state
from durable_agent.records import (
    ErrorInfo,
    Event,
    FailedEvent,
    Lease,
    LeaseTaken,
    check_events,
    utcnow,
    validator_of,
)
from durable_agent.run import RunContext
from durable_agent.telemetry._hook import segment_hook
from durable_agent.tools import Tool

if TYPE_CHECKING:
    from durable_agent._lease import Claim
    from durable_agent.engine import Engine

__all__ = ["AT_REST", "CancelRequested", "ExecutionCore", "Spec"]

Spec = tuple[type[Any], str | None, dict[str, Any]]
"""An event to build: its class, its trigger (None: no transition) and its fields."""

AT_REST: frozenset[RunState] = frozenset(
    {RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED}
)
"""States a run rests in without an owner: the write that enters one releases the lease."""


class CancelRequested(Exception):
    """Internal: a cancellation request was seen at a transition boundary."""


class ExecutionCore:
    """What one execution of one run holds, and how it writes to the store."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        tools: Mapping[str, Tool],
        *,
        output_type: type[BaseModel] | None = None,
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self.tools = tools
        self.output_type = output_type
        self._definitions = [t.definition() for t in tools.values()]
        self.ctx: RunContext | None = None
        self.lease: Lease | None = None
        self._lock = asyncio.Lock()
        self.parallel = False
        """Several tool calls of this execution run (and append) at once: order their appends."""
        self._live_intents: set[str] = set()
        self._resumed_in_model_call = False
        self._heartbeat_error: BaseException | None = None
        self._uncertain = False
        """An append was interrupted: whether it landed is for the store to say."""
        self._claim: Claim | None = None
        """This execution drives the run (no other one of this process may meanwhile)."""
        self.stop_when: Callable[[], bool] | None = None
        """Asked before each model call: True leaves the run as it is, released for another
        process to continue (a worker shutting down). Never asked between a tool-call
        intent and its result, so a hand-over never makes a call ambiguous."""
        self._tel = segment_hook(run_id, engine.agent_name)
        """Telemetry, chosen once per segment (a no-op per transition unless configured)."""
        self._traceparent: str | None = None
        """Stored with this segment's first append, so the next segment's span links to it."""
        self._lease_taken: LeaseTaken | None = None
        """Stamped on the next event appended: the lease this execution has just taken."""

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    def _cancel_reason(self) -> str:
        return (self.lease.cancel_requested if self.lease else None) or "cancelled"

    def _check_cancel(self) -> None:
        if self.lease is not None and self.lease.cancel_requested is not None:
            raise CancelRequested

    async def _record_interruption(self, ctx: RunContext, error: BaseException) -> None:
        """Append ERROR for a deadline or cancellation, if the run was mid-effect.

        Shielded, so a second cancellation cannot cut the record short. If an
        append was interrupted, the run is reloaded first: the store is the
        source of truth, and the record must follow what it holds.
        """
        await asyncio.shield(self._record_interruption_now(ctx, error))

    async def _record_interruption_now(self, ctx: RunContext, error: BaseException) -> None:
        if self.lease is None:
            return
        if self._uncertain:
            stored = await self.backend.load_run(self.run_id)
            held = stored.header.lease
            if held is None or stored.header.lease_generation != self.lease.generation:
                self.lease = None  # the interrupted write brought the run to rest
                return
            fresh = RunContext.from_stored(stored)
            if fresh.seq > ctx.seq:
                # The write landed (only this lease could write it): it carried
                # the lease's stamp, which the next write must not repeat.
                self._lease_taken = self._traceparent = None
            vars(ctx).update(vars(fresh))  # callers hold `ctx`; keep it the same object
            self._uncertain = False
        if ctx.state not in (RunState.MODEL_CALL, RunState.TOOL_EXEC):
            return
        info = ErrorInfo.from_exception(error).model_copy(update={"retryable": True})
        await self._append((FailedEvent, "fail", {"error": info, "failed_state": ctx.state}))

    def _context(self) -> RunContext:
        if self.ctx is None or self.lease is None:
            raise RuntimeError("RunExecution needs create() or acquire() first")
        return self.ctx

    async def _append(self, *specs: Spec) -> None:
        """Build events for ``specs`` after the current seq, append them, then apply them."""
        # Only parallel tool calls append from several tasks at once; the common
        # path (one task appending) takes no lock.
        ordered = self.parallel
        if ordered:
            await self._lock.acquire()
        try:
            if self._heartbeat_error is not None:
                await self._judge_heartbeat_error()
            ctx, lease = self.ctx, self.lease
            if ctx is None or lease is None:
                raise RuntimeError("RunExecution needs create() or acquire() first")
            # Refused here, before the store sees any of it: a value the decoder
            # could not read back must never be half-written (UnstorableValueError).
            # The check is the encoding: the texts travel with the events to the store.
            events = check_events(self._build(ctx, specs))
            # The write that brings the run to rest gives the lease up atomically.
            release = events[-1].state in AT_REST
            mark = self._tel.append_start()
            try:
                self.lease = await self.backend.append(
                    ctx.run_id, events, expected_seq=ctx.seq, lease=lease, release=release
                )
            except asyncio.CancelledError:
                # The write may or may not have landed: the store will say
                # (`_record_interruption` reloads before it writes again).
                # Awaiting it under a shield instead would cost a task per append.
                self._uncertain = True
                raise
            except Exception as exc:
                self._tel.append_failed(mark, events, exc)
                raise
            # Only the first event a segment stores carries these.
            self._lease_taken = self._traceparent = None
            for event in events:
                ctx.apply(event)
            if release:
                self.lease = None
            recorded(ctx.run_id, events)
            self._tel.appended(mark, ctx, events, release)
        finally:
            if ordered:
                self._lock.release()

    def _build(self, ctx: RunContext, specs: tuple[Spec, ...]) -> list[Event]:
        """The events of ``specs``, numbered after ``ctx.seq`` and moved along their triggers."""
        events: list[Event] = []
        state, seq = ctx.state, ctx.seq
        # One timestamp per append: its events become durable together.
        at = utcnow()
        stamp, trace = self._lease_taken, self._traceparent
        for cls, trigger, fields in specs:
            if trigger is not None:
                state = next_state(state, trigger, failed_state=ctx.failed_state)
            seq += 1
            data = {**fields, "seq": seq, "state": state, "trigger": trigger, "at": at}
            if stamp is not None or trace is not None:
                data["lease_taken"], data["traceparent"] = stamp, trace
                stamp = trace = None
            # The record's validator itself, as ``cls(**data)`` calls it: the
            # ``__init__`` around it is a fifth of the cost, twice per append.
            events.append(validator_of(cls).validate_python(data))
        return events

    def _keepalive(self) -> Effect:
        """Renew the lease every third of its TTL while one effect runs.

        Appends renew the lease too, so only effects that outlast a third of the
        TTL see a renewal; one heartbeat per event loop does it for every run
        (`durable_agent._heartbeat`), and an idle run holds no timer at all.
        """
        return Effect(self)

    async def _judge_heartbeat_error(self) -> None:
        """Raise what a failed renewal means now, or carry on if the lease is still held.

        A renewal that could not reach the store says nothing about the lease:
        the store is asked again, under the lease, before this append. Refused
        (`LeaseLostError`), the run is lost to another owner and that is raised;
        still unreachable, that is raised; renewed, nobody took the run and the
        append goes ahead, fenced by the store like any other.
        """
        error, lease = self._heartbeat_error, self.lease
        assert error is not None
        if not isinstance(error, StoreUnavailableError) or lease is None:
            raise error
        try:
            self.lease = await self.backend.renew_lease(self.run_id, lease)
        except Exception as exc:
            self._heartbeat_error = exc
            raise
        self._heartbeat_error = None

    async def _renew(self) -> None:
        lease = self.lease
        if lease is None or self._heartbeat_error is not None:
            return
        try:
            renewed = await self.backend.renew_lease(self.run_id, lease)
        except Exception as exc:  # raised at the next append, never ignored
            self._heartbeat_error = exc
            return
        if self.lease is not None and self.lease.generation == renewed.generation:
            self.lease = renewed

