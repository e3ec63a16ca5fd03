"""The engine: load → restore → decide → perform → append → repeat.

It owns the durability rules of DESIGN.md §3:

1. *Intent before effect*: the event that enters MODEL_CALL, and a
   `ToolStartedEvent` per tool call, are durable before the call starts.
2. *Result before the next effect*: a model answer or tool result is appended
   before anything else external starts.
3. *A recorded result is never recomputed*: a resumed run only performs the
   effects its log has no result for.
4. *The ambiguous window is explicit*: a call with an intent and no result is
   run again (same idempotency key), unless its tool is ``idempotent=False``:
   then the run waits for a human to decide it.
5. *One writer per run*: every append carries the expected ``seq`` and the
   lease generation; a lease is renewed by each append and by a heartbeat only
   while one effect outlasts a third of its TTL.
7. *Failures are recorded, not swallowed*: a model or tool failure, a deadline
   and an outer cancellation are appended before the exception reaches the
   caller.

Cancellation requests from other processes arrive on the lease (the store sets
``cancel_requested`` on every lease it renews); the engine checks it at every
transition boundary, so no new effect starts once it is seen.

The engine never imports a concrete backend or a vendor SDK.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from durable_agent._lease import (
    Claim,
    OwedReleases,
    acquire_lease,
    claim_run,
    interruption,
    release_now,
    settle,
    undo_acquire,
    undo_create,
)
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    DecisionError,
    OutputValidationError,
    RunBusyError,
    RunCancelledError,
    RunExistsError,
    RunFailedError,
    RunStateError,
    RunTimeoutError,
    ToolArgumentsError,
    ToolRetry,
)
from durable_agent.fsm import FINAL_STATES, RunState, next_state
from durable_agent.human import Decision, Requirement, collect_decisions
from durable_agent.models import ChatModel, OutputSchema
from durable_agent.records import (
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    ErrorInfo,
    Event,
    FailedEvent,
    JSONValue,
    Lease,
    Message,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputFormat,
    OutputRejectedEvent,
    RequirementRecord,
    RunHeader,
    StoredRun,
    ToolCallPart,
    ToolFinishedEvent,
    ToolResultMessage,
    ToolStartedEvent,
    TransitionEvent,
    UserMessage,
    WaitingEvent,
)
from durable_agent.retry import RetryPolicy, is_retryable
from durable_agent.run import RunContext
from durable_agent.tools import Tool, ToolContext

__all__ = ["Engine", "RetryPolicy", "RunExecution", "cancel_run", "decide_run", "is_retryable"]

_Spec = tuple[type[Any], str | None, dict[str, Any]]
"""An event to build: its class, its trigger (None: no transition) and its fields."""


class Engine:
    """Runs agent runs against one backend, model and tool set. Shared by many runs.

    ``model=None`` makes an engine that only records (human decisions,
    cancellations) and refuses to call a model: `decide_run` and `cancel_run`
    use one, so a web handler or the CLI needs no agent definition.
    """

    def __init__(
        self,
        *,
        backend: Backend,
        model: ChatModel | None,
        retry: RetryPolicy | None = None,
        lease_ttl: float = 30.0,
        agent_name: str = "agent",
        owner: LeaseOwner | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.retry = retry or RetryPolicy()
        self.lease_ttl = lease_ttl
        self.agent_name = agent_name
        # One owner per process (not per engine): a lease this process still
        # holds, after a cancellation or a failed release, never blocks any
        # agent of the same process.
        self._owner = owner or LeaseOwner.process()
        self.owed = OwedReleases()
        """Leases this engine failed to release, retried at its next create or acquire."""

    @property
    def owner(self) -> LeaseOwner:
        """This process's lease owner (renewed after a fork, since the pid changed)."""
        if self._owner.pid != os.getpid():
            self._owner = LeaseOwner.process()
        return self._owner

    def execution(
        self,
        run_id: str,
        tools: Mapping[str, Tool],
        *,
        output_type: type[BaseModel] | None = None,
    ) -> RunExecution:
        """A handle to create or resume ``run_id`` with ``tools``.

        ``output_type`` validates a structured final answer; without it a run
        that has an output format only checks that the answer is JSON.
        """
        return RunExecution(self, run_id, tools, output_type=output_type)


_AT_REST: frozenset[RunState] = frozenset(
    {RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED}
)
"""States a run rests in without an owner: the write that enters one releases the lease."""


class _CancelRequested(Exception):
    """Internal: a cancellation request was seen at a transition boundary."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do now with one pending tool call."""

    action: Literal["run", "record", "wait"]
    call: ToolCallPart
    arguments: Mapping[str, JSONValue] | None = None
    result: ToolResultMessage | None = None
    requirement: RequirementRecord | None = None


class RunExecution:
    """One attempt to drive one run while holding its lease."""

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
        self._live_intents: set[str] = set()
        self._resumed_in_model_call = False
        self._heartbeat_error: BaseException | None = None
        self._uncertain = False
        """An append was interrupted: whether it landed is for the store to say."""
        self._claim: Claim | None = None
        """This execution drives the run (no other one of this process may meanwhile)."""

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    # -- opening ------------------------------------------------------------

    async def create(
        self,
        messages: Sequence[Message],
        *,
        session_id: str | None,
        user_id: str | None,
        output_format: OutputFormat | None = None,
    ) -> None:
        """Store a new, started run with its input, holding its lease from the start."""
        owner = self.engine.owner
        ttl = self.engine.lease_ttl
        lease = Lease(
            owner=owner.id,
            host=owner.host,
            pid=owner.pid,
            generation=1,
            expires_at=time.time() + ttl,
            ttl=ttl,
        )
        # The run is stored with its input and its start in one write: the
        # start is the intent of the first model call (rule 1), and a run
        # nobody started does not need a write of its own.
        events: list[Event] = [
            CreatedEvent(
                seq=1,
                state=RunState.PENDING,
                messages=tuple(messages),
                output_format=output_format,
            ),
            TransitionEvent(
                seq=2, state=next_state(RunState.PENDING, "start"), trigger="start"
            ),
        ]
        header = RunHeader(
            run_id=self.run_id,
            session_id=session_id,
            user_id=user_id,
            agent_name=self.engine.agent_name,
            state=events[-1].state,
            seq=events[-1].seq,
            lease=lease,
            lease_generation=1,
        )
        await self._retry_owed()
        self._take_claim()
        # The write runs in its own task: a cancellation of the caller never
        # cuts it mid-command, so its outcome is known and can be settled.
        write = asyncio.ensure_future(self.backend.create_run(header, events))
        try:
            await asyncio.shield(write)
        except RunExistsError:
            self._drop_claim()
            raise
        except BaseException as exc:
            claim, self._claim = self._claim, None
            # `partial`, not a closure: the settle may outlive this except block.
            record = functools.partial(self._record_landed, error=exc)
            undo = undo_create(
                write, self.backend, self.run_id, lease, claim, self.engine.owed, record=record
            )
            await settle(undo, exc)
            self.lease = None
            raise
        ctx = RunContext.from_header(header)
        ctx.apply_all(events)
        self.ctx, self.lease = ctx, lease

    async def _record_landed(self, stored: StoredRun, error: BaseException) -> None:
        """Record ``error`` on a run whose create landed unseen, releasing its lease."""
        self.ctx, self.lease = RunContext.from_stored(stored), stored.header.lease
        await self._record_interruption_now(self.ctx, interruption(error))

    async def load(self) -> RunContext:
        """Read the run without taking its lease (for finished runs and inspection)."""
        stored = await self.backend.load_run(self.run_id)
        self.ctx = RunContext.from_stored(stored)
        return self.ctx

    async def acquire(self) -> RunContext:
        """Take the lease (taking over from a dead owner on this host) and load the run.

        A lease this process holds is taken back at once. Raises `RunBusyError`
        when another live process holds the run, and `RunStateError` when
        another task of this process is driving it right now. If the caller is
        cancelled, or the load fails, after the store granted the lease, the
        lease is given back before the exception propagates.
        """
        await self._retry_owed()
        self._take_claim()
        owner = self.engine.owner
        write = asyncio.ensure_future(
            acquire_lease(self.backend, self.run_id, owner, self.engine.lease_ttl)
        )
        try:
            self.lease = await asyncio.shield(write)
            ctx = await self.load()
        except BaseException as exc:
            claim, self._claim, self.lease = self._claim, None, None
            await settle(
                undo_acquire(write, self.backend, self.run_id, owner, claim, self.engine.owed),
                exc,
            )
            raise
        self.engine.owed.forget(self.run_id)  # the new lease supersedes the one left behind
        self._resumed_in_model_call = ctx.state is RunState.MODEL_CALL
        return ctx

    async def release(self) -> None:
        """Give the lease up; the run stays as stored.

        A release that fails (the store is unreachable) raises, with a note: the
        release is retried when this engine next uses the store, and any
        continue from this process takes the lease back meanwhile.
        """
        lease, self.lease = self.lease, None
        try:
            if lease is not None:
                owed = self.engine.owed
                failed = await asyncio.shield(release_now(self.backend, lease, owed, self.run_id))
                if failed is not None:
                    raise failed
        finally:
            self._drop_claim()

    def _take_claim(self) -> None:
        self._drop_claim()
        self._claim = claim_run(self.run_id, self.engine.owner, self)

    def _drop_claim(self) -> None:
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.drop()

    async def _retry_owed(self) -> None:
        if self.engine.owed:
            await self.engine.owed.retry(self.backend, self.engine.owner)

    # -- human decisions and cancellation --------------------------------------

    async def decide(self, decisions: Mapping[str, Decision]) -> None:
        """Record decisions (already checked by `collect_decisions`) in one append.

        When they settle the last open requirement, the same append moves the
        run back to TOOL_EXEC (``decided``); nothing runs before it is durable.
        """
        ctx = self._context()
        if ctx.state is not RunState.WAITING:
            raise RunStateError(ctx.run_id, ctx.state.value, "only a WAITING run takes decisions")
        remaining = set(ctx.open_requirements) - set(decisions)
        specs: list[_Spec] = []
        items = list(decisions.items())
        for index, (rid, decision) in enumerate(items):
            last = index == len(items) - 1
            specs.append(
                (
                    DecisionEvent,
                    "decided" if last and not remaining else None,
                    {
                        "requirement_id": rid,
                        "action": decision.action,
                        "reason": decision.reason,
                        "value": decision.value,
                        "inputs": dict(decision.inputs),
                    },
                )
            )
        await self._append(*specs)

    async def cancel(self, reason: str) -> None:
        """Record CANCELLED now (the caller holds the lease)."""
        ctx = self._context()
        if ctx.state in FINAL_STATES:
            return
        await self._append((CancelledEvent, "cancel", {"reason": reason, "from_state": ctx.state}))

    # -- driving ------------------------------------------------------------

    async def run(self, *, timeout: float | None = None) -> RunContext:
        """Drive the run until DONE, WAITING or CANCELLED; release the lease however it ends.

        Raises `RunFailedError` (recorded in the store) when a model or tool
        call fails, `RunTimeoutError` (recorded) when ``timeout`` seconds pass,
        and re-raises `asyncio.CancelledError` after recording the interruption.
        Store errors propagate as they are.
        """
        ctx = self.ctx
        if ctx is None:
            raise RuntimeError("RunExecution.run() needs create() or acquire() first")
        if self.lease is None:
            self._drop_claim()
            return ctx  # at rest already (decisions left the run WAITING)
        try:
            await self._guarded(ctx, timeout)
        except BaseException as exc:
            await asyncio.shield(self._release_noting(exc))
            raise
        await self.release()  # a no-op when the last write released it
        return ctx

    async def _guarded(self, ctx: RunContext, timeout: float | None) -> None:
        """`_loop` under the deadline, turning interruptions into records."""
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self._loop(ctx)
        except _CancelRequested:
            await self.cancel(ctx.cancel_reason or self._cancel_reason())
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            error = RunTimeoutError(
                ctx.run_id, ctx.state.value, ctx.state.value,
                f"the run's deadline of {timeout} s passed",
            )
            await self._record_interruption(ctx, error)
            raise error from exc
        except asyncio.CancelledError as cancelled:
            # Recorded so the run is visibly interrupted (ERROR) and resumable;
            # the cancellation itself always reaches the canceller, even when the
            # record cannot be written (the failure is attached, not dropped).
            try:
                await self._record_interruption(
                    ctx, asyncio.CancelledError("the task awaiting the run was cancelled")
                )
            except Exception as failed:
                cancelled.add_note(
                    f"run {ctx.run_id!r}: the interruption could not be recorded "
                    f"({type(failed).__name__}: {failed}); the store keeps state {ctx.state}"
                )
            raise

    async def _loop(self, ctx: RunContext) -> None:
        if ctx.state is RunState.ERROR:
            self._check_cancel()
            await self._append((TransitionEvent, "resume", {}))
        while True:
            if ctx.state not in FINAL_STATES:
                self._check_cancel()
            match ctx.state:
                case RunState.PENDING:
                    await self._append((TransitionEvent, "start", {}))
                case RunState.MODEL_CALL:
                    await self._model_step(ctx)
                case RunState.TOOL_EXEC:
                    await self._tool_step(ctx)
                case RunState.DONE | RunState.WAITING:
                    return
                case RunState.CANCELLED:
                    raise RunCancelledError(ctx.run_id, ctx.cancel_reason or "cancelled")
                case RunState.ERROR:
                    raise RunStateError(ctx.run_id, ctx.state.value, "it cannot be driven further")

    def _cancel_reason(self) -> str:
        return (self.lease.cancel_requested if self.lease else None) or "cancelled"

    def _check_cancel(self) -> None:
        if self.lease is not None and self.lease.cancel_requested is not None:
            raise _CancelRequested

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
            vars(ctx).update(vars(fresh))  # callers hold `ctx`; keep it the same object
            self._uncertain = False
        if ctx.state not in (RunState.MODEL_CALL, RunState.TOOL_EXEC):
            return
        info = ErrorInfo.from_exception(error).model_copy(update={"retryable": True})
        await self._append((FailedEvent, "fail", {"error": info, "failed_state": ctx.state}))

    async def _release_noting(self, exc: BaseException) -> None:
        """Release after ``exc`` ended the run; a failed release is noted on it, never raised.

        The release is owed (`OwedReleases`), so it does not hide the exception
        that ended the run and is not lost either.
        """
        try:
            await self.release()
        except Exception as failed:
            for note in getattr(failed, "__notes__", ()):
                exc.add_note(note)

    def _context(self) -> RunContext:
        if self.ctx is None or self.lease is None:
            raise RuntimeError("RunExecution needs create() or acquire() first")
        return self.ctx

    async def _append(self, *specs: _Spec) -> None:
        """Build events for ``specs`` after the current seq, append them, then apply them."""
        async with self._lock:
            if self._heartbeat_error is not None:
                raise self._heartbeat_error
            ctx = self._context()
            assert self.lease is not None
            events: list[Event] = []
            state, seq = ctx.state, ctx.seq
            for cls, trigger, fields in specs:
                if trigger is not None:
                    state = next_state(state, trigger, failed_state=ctx.failed_state)
                seq += 1
                events.append(cls(seq=seq, state=state, trigger=trigger, **fields))
            # The write that brings the run to rest gives the lease up atomically.
            release = state in _AT_REST
            try:
                self.lease = await self.backend.append(
                    ctx.run_id, events, expected_seq=ctx.seq, lease=self.lease, release=release
                )
            except asyncio.CancelledError:
                # The write may or may not have landed: the store will say
                # (`_record_interruption` reloads before it writes again).
                # Awaiting it under a shield instead would cost a task per append.
                self._uncertain = True
                raise
            self._settle(events, release)

    def _settle(self, events: list[Event], released: bool) -> None:
        self._context().apply_all(events)
        if released:
            self.lease = None

    # -- model calls ----------------------------------------------------------

    async def _model_step(self, ctx: RunContext) -> None:
        engine = self.engine
        model = engine.model
        if model is None:
            raise RunStateError(
                ctx.run_id, ctx.state.value,
                "this engine only records decisions and cancellations; continue the run "
                "with its Agent",
            )
        definitions = self._definitions
        fmt = ctx.output_format
        schema = OutputSchema(fmt.name, fmt.json_schema, fmt.description) if fmt else None
        repeated, self._resumed_in_model_call = self._resumed_in_model_call, False
        attempt = 1
        while True:
            self._check_cancel()
            started = time.perf_counter()
            try:
                async with self._keepalive():
                    response = await model.request(
                        ctx.messages, tools=definitions, output_schema=schema
                    )
            except Exception as exc:
                info = ErrorInfo.from_exception(exc)
                if is_retryable(exc) and attempt < engine.retry.attempts:
                    delay = engine.retry.delay_for(attempt, exc)
                    await self._append(
                        (ModelAttemptFailedEvent, None, {"attempt": attempt, "error": info,
                                                         "retry_in": delay})
                    )
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                await self._append(
                    (FailedEvent, "fail", {"error": info, "failed_state": RunState.MODEL_CALL})
                )
                raise RunFailedError(
                    ctx.run_id, ctx.state.value, RunState.MODEL_CALL.value,
                    f"model call failed after {attempt} attempt(s): {info.type}: {info.message}",
                ) from exc
            answer = {
                "message": response.message,
                "model": response.model,
                "usage": response.usage,
                "attempt": attempt,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "repeated": repeated,
            }
            calls = response.message.tool_calls
            if calls:
                # The intents of the calls that start at once ride in the same
                # atomic append as the answer that asks for them: one write
                # instead of two, and rule 1 holds because they start only after
                # it returns. Calls that wait for a human get no intent yet.
                now = [c for c in calls if self._runs_at_once(c)]
                await self._append(
                    (ModelResponseEvent, "tool_calls", answer),
                    *((ToolStartedEvent, None, {"call_id": c.id, "name": c.name}) for c in now),
                )
                self._live_intents.update(c.id for c in now)
                return
            problem = self._check_output(ctx, response.message.content)
            if problem is None:
                await self._append((ModelResponseEvent, "final_answer", answer))
                return
            info = ErrorInfo.from_exception(problem)
            if attempt < engine.retry.attempts:
                # Within the retry budget the model sees why its answer was refused.
                feedback = UserMessage(
                    content=f"Your answer does not match the required output format: "
                    f"{problem}. Answer again with only JSON that matches the schema."
                )
                await self._append(
                    (OutputRejectedEvent, None, {
                        "message": response.message, "feedback": feedback, "error": info,
                        "model": response.model, "usage": response.usage, "attempt": attempt,
                    })
                )
                attempt += 1
                continue
            await self._append(
                (FailedEvent, "fail", {"error": info, "failed_state": RunState.MODEL_CALL})
            )
            raise RunFailedError(
                ctx.run_id, ctx.state.value, RunState.MODEL_CALL.value,
                f"the final answer failed validation after {attempt} attempt(s): {problem}",
            ) from problem

    def _runs_at_once(self, call: ToolCallPart) -> bool:
        tool = self.tools.get(call.name)
        return tool is None or tool.requirement_kind is None

    def _check_output(self, ctx: RunContext, content: str | None) -> Exception | None:
        """Return why ``content`` is not an acceptable final answer, or None."""
        if ctx.output_format is None:
            return None
        text = content or ""
        try:
            if self.output_type is not None:
                self.output_type.model_validate_json(text)
            else:
                json.loads(text)
        except ValidationError as exc:
            return OutputValidationError(
                f"{exc.error_count()} error(s): "
                + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                    for e in exc.errors()
                )
            )
        except ValueError as exc:
            return OutputValidationError(f"not JSON: {exc}")
        return None

    # -- tool calls -----------------------------------------------------------

    def _plan(self, ctx: RunContext, call: ToolCallPart) -> _Plan:
        """Decide what to do with one pending call from the tool and the recorded decisions."""
        tool = self.tools.get(call.name)
        attempts = ctx.call_attempts.get(call.id, 0)
        # An intent without a result, not written by this execution and not
        # followed by a recorded failure: the call may or may not have run.
        in_doubt = (
            attempts > 0 and call.id not in self._live_intents and call.id not in ctx.failed_calls
        )
        if tool is not None and in_doubt and not tool.idempotent:
            rid = f"{call.id}:in_doubt:{attempts}"
            decision = ctx.decisions.get(rid)
            if decision is None:
                return self._wait(call, rid, "in_doubt")
            match decision.action:
                case "confirm":
                    return _Plan("run", call)
                case "result":
                    return self._record(call, decision.value, is_error=False)
                case _:
                    reason = decision.reason or "the call may have run before a crash"
                    return self._record(call, f"failed by a human decision: {reason}", True)
        kind = tool.requirement_kind if tool is not None else None
        if kind is None:
            return _Plan("run", call)
        rid = f"{call.id}:{kind}"
        decision = ctx.decisions.get(rid)
        if decision is None:
            return self._wait(call, rid, kind)
        match decision.action:
            case "confirm":
                return _Plan("run", call)
            case "input":
                return _Plan("run", call, arguments={**call.arguments, **decision.inputs})
            case "result":
                return self._record(call, decision.value, is_error=False)
            case _:
                reason = decision.reason or "no reason given"
                return self._record(call, f"rejected by a human: {reason}", is_error=True)

    def _wait(self, call: ToolCallPart, rid: str, kind: Any) -> _Plan:
        tool = self.tools.get(call.name)
        fields = tool.user_fields if tool is not None and kind == "user_input" else ()
        record = RequirementRecord(
            id=rid, kind=kind, call_id=call.id, tool_name=call.name,
            arguments=dict(call.arguments), fields=fields,
        )
        return _Plan("wait", call, requirement=record)

    @staticmethod
    def _record(call: ToolCallPart, value: JSONValue, is_error: bool) -> _Plan:
        content = value if isinstance(value, str) else json.dumps(value)
        result = ToolResultMessage(
            call_id=call.id, name=call.name, content=content, is_error=is_error
        )
        return _Plan("record", call, result=result)

    async def _tool_step(self, ctx: RunContext) -> None:
        calls = list(ctx.pending_calls.values())
        plans = [self._plan(ctx, c) for c in calls]
        waits = [p.requirement for p in plans if p.requirement is not None]
        records = [p for p in plans if p.result is not None]
        runs = [p for p in plans if p.action == "run"]
        if records:
            specs: list[_Spec] = [
                (ToolFinishedEvent, None, {"result": p.result}) for p in records
            ]
            if len(records) == len(calls):
                specs.append((TransitionEvent, "tools_done", {}))
            await self._append(*specs)
        if not calls:
            await self._append((TransitionEvent, "tools_done", {}))
            return
        if runs:
            await self._run_calls(ctx, runs)
        if waits:
            await self._append((WaitingEvent, "needs_human", {"requirements": tuple(waits)}))

    async def _run_calls(self, ctx: RunContext, runs: list[_Plan]) -> None:
        again = [p.call for p in runs if p.call.id not in self._live_intents]
        if again:
            self._check_cancel()
            # A call with no live intent either never started (approved just
            # now) or may have run in an earlier process: tools are
            # at-least-once (rule 4), and the new intent records the (re-)run
            # under the same idempotency key.
            await self._append(
                *(
                    (ToolStartedEvent, None, {"call_id": c.id, "name": c.name,
                                              "attempt": ctx.call_attempts.get(c.id, 0) + 1})
                    for c in again
                )
            )
            self._live_intents.update(c.id for c in again)
        self._check_cancel()
        outcomes: list[Exception | None]
        if len(runs) == 1:  # the common case needs no task group
            async with self._keepalive():
                outcomes = [await self._run_call(ctx, runs[0])]
        else:
            try:
                async with self._keepalive(), asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._run_call(ctx, p)) for p in runs]
            except BaseExceptionGroup as grouped:
                raise grouped.exceptions[0] from None
            outcomes = [t.result() for t in tasks]
        self._live_intents.clear()
        failures = [(p.call, o) for p, o in zip(runs, outcomes, strict=True) if o is not None]
        if failures:
            call, error = failures[0]
            assert error is not None
            info = ErrorInfo.from_exception(error)
            await self._append(
                (FailedEvent, "fail", {"error": info, "failed_state": RunState.TOOL_EXEC,
                                       "call_id": call.id})
            )
            raise RunFailedError(
                ctx.run_id, ctx.state.value, RunState.TOOL_EXEC.value,
                f"tool {call.name!r} (call {call.id}) raised {info.type}: {info.message}",
            ) from error

    async def _run_call(self, ctx: RunContext, plan: _Plan) -> Exception | None:
        """Run one call and append its result; return the tool's exception instead of raising.

        Store errors propagate: without a durable result nothing else may start.
        """
        call = plan.call
        started = time.perf_counter()
        tool = self.tools.get(call.name)
        is_error = True
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            content = f"unknown tool {call.name!r}; the available tools are: {known}"
        else:
            tool_ctx = ToolContext(
                run_id=ctx.run_id,
                call_id=call.id,
                idempotency_key=f"{ctx.run_id}:{ctx.calls_seq}:{call.id}",
                attempt=ctx.call_attempts.get(call.id, 1),
            )
            try:
                content = await tool.call(plan.arguments or call.arguments, tool_ctx)
                is_error = False
            except ToolRetry as retry:
                content = retry.message
            except ToolArgumentsError as invalid:
                content = str(invalid)
            except Exception as exc:
                return exc
        result = ToolResultMessage(
            call_id=call.id, name=call.name, content=content, is_error=is_error
        )
        finished: _Spec = (
            ToolFinishedEvent,
            None,
            {"result": result, "duration_ms": round((time.perf_counter() - started) * 1000, 3)},
        )
        async with self._lock:
            last = set(ctx.pending_calls) == {call.id}
        # The last result and the move back to MODEL_CALL share one append: the
        # next effect is the model call, which starts only after it returns.
        # Only this task can complete `call`, so `last` cannot go stale.
        if last:
            await self._append(finished, (TransitionEvent, "tools_done", {}))
        else:
            await self._append(finished)
        return None

    @asynccontextmanager
    async def _keepalive(self) -> AsyncIterator[None]:
        """Renew the lease every third of its TTL while one effect runs.

        Appends renew the lease too, so this timer only fires for effects that
        outlast a third of the TTL; an idle run holds no timer at all.
        """
        assert self.lease is not None
        loop = asyncio.get_running_loop()
        interval = self.lease.ttl / 3
        renewals: set[asyncio.Task[None]] = set()
        handle: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal handle
            task = loop.create_task(self._renew())
            renewals.add(task)
            task.add_done_callback(renewals.discard)
            handle = loop.call_later(interval, tick)

        handle = loop.call_later(interval, tick)
        try:
            yield
        finally:
            if handle is not None:
                handle.cancel()
            for task in list(renewals):
                await task

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


async def cancel_run(
    backend: Backend,
    run_id: str,
    *,
    reason: str = "cancelled by request",
    owner: LeaseOwner | None = None,
    lease_ttl: float = 30.0,
) -> RunState:
    """Cancel a run from any process; return its state afterwards.

    The request is recorded first (`Backend.request_cancel`). If no live
    process holds the run, this call takes the lease and records CANCELLED
    itself; otherwise the holder stops at its next transition boundary and
    records it, and the state returned is the one it has until then. A DONE
    run raises `RunStateError`; a CANCELLED one is left as it is.
    """
    header = await backend.get_run(run_id)
    if header.state is RunState.CANCELLED:
        return header.state
    if header.state is RunState.DONE:
        raise RunStateError(run_id, header.state.value, "a finished run cannot be cancelled")
    await backend.request_cancel(run_id, reason)
    execution = _recorder(backend, run_id, owner, lease_ttl)
    try:
        ctx = await execution.acquire()
    except (RunBusyError, RunStateError):  # another process, or another task here, runs it
        return (await backend.get_run(run_id)).state
    try:
        await execution.cancel(reason)
        return ctx.state
    finally:
        await execution.release()


async def decide_run(
    backend: Backend,
    run_id: str,
    *,
    requirements: Iterable[Requirement] = (),
    approvals: Mapping[str, bool | str] | None = None,
    results: Mapping[str, JSONValue] | None = None,
    inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
    owner: LeaseOwner | None = None,
    lease_ttl: float = 30.0,
) -> RunState:
    """Record human decisions on a WAITING run from any process, running nothing.

    The same checks and records as ``Agent.continue_run_async(approvals=...)``;
    afterwards the run is WAITING with the rest, or TOOL_EXEC with nobody
    running it, for any ``continue_run_async`` (which has the tools) to pick
    up. Returns the state afterwards. Raises `DecisionError` for decisions that
    do not fit (nothing recorded) and `RunBusyError` when a live process holds
    the run.
    """
    execution = _recorder(backend, run_id, owner, lease_ttl)
    ctx = await execution.acquire()
    try:
        if ctx.state is not RunState.WAITING:
            raise DecisionError(
                f"run {run_id!r} is {ctx.state.value}, not WAITING: it has no requirement to decide"
            )
        decisions = collect_decisions(
            run_id,
            ctx.open_requirements,
            requirements=requirements,
            approvals=approvals,
            results=results,
            inputs=inputs,
        )
        await execution.decide(decisions)
        return ctx.state
    finally:
        await execution.release()


def _recorder(
    backend: Backend, run_id: str, owner: LeaseOwner | None, lease_ttl: float
) -> RunExecution:
    engine = Engine(backend=backend, model=None, lease_ttl=lease_ttl, owner=owner)
    return engine.execution(run_id, {})
