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
import os
import time
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel

from durable_agent._lease import (
    OwedReleases,
    acquire_lease,
    claim_run,
    interruption,
    release_now,
    settle,
    undo_acquire,
    undo_create,
)
from durable_agent._model_step import ModelStep
from durable_agent._recording import CancelRequested, Spec
from durable_agent._redact import redact_exception
from durable_agent._tool_step import ToolStep
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    DecisionError,
    RunBusyError,
    RunCancelledError,
    RunExistsError,
    RunStateError,
    RunTimeoutError,
)
from durable_agent.fsm import FINAL_STATES, RunState, next_state
from durable_agent.human import Decision, Requirement, collect_decisions
from durable_agent.models import ChatModel
from durable_agent.records import (
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    Event,
    JSONValue,
    Lease,
    Message,
    OutputFormat,
    RunHeader,
    StoredRun,
    TransitionEvent,
)
from durable_agent.retry import RetryPolicy, is_retryable
from durable_agent.run import RunContext
from durable_agent.tools import Tool

__all__ = ["Engine", "RetryPolicy", "RunExecution", "cancel_run", "decide_run", "is_retryable"]


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



class RunExecution(ModelStep, ToolStep):
    """One attempt to drive one run while holding its lease.

    The lifecycle lives here (create or acquire, drive, release); the model step,
    the tool step and recording are in `durable_agent._model_step`,
    `durable_agent._tool_step` and `durable_agent._recording`.
    """

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
        specs: list[Spec] = []
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
            redact_exception(exc)  # its chain (and the notes) may quote a secret
            raise
        await self.release()  # a no-op when the last write released it
        return ctx

    async def _guarded(self, ctx: RunContext, timeout: float | None) -> None:
        """`_loop` under the deadline, turning interruptions into records."""
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self._loop(ctx)
        except CancelRequested:
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
