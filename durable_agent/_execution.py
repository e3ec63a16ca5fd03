"""One execution of one run: create or acquire it, drive it, release it.

`RunExecution` is the lifecycle half of the engine (DESIGN.md §3): it stores a
new run with its start in one write, or takes the lease of a stored one (taking
over from a dead owner of this host); it drives the run loop (``_loop``) under
the deadline, turning a deadline, a cancellation or a cancellation request into
a record; and it gives the lease up however the run ends. A cancellation at
any await of create, acquire or release is settled before it propagates
(`durable_agent._lease`). The model step, the tool step and recording are
`durable_agent._model_step`, `durable_agent._tool_step` and
`durable_agent._recording`; `durable_agent.engine.Engine` holds the entries per
user intent that use it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from durable_agent._lease import (
    acquire_lease,
    claim_run,
    interruption,
    release_now,
    settle,
    shielded_write,
    undo_acquire,
    undo_create,
)
from durable_agent._model_step import ModelStep
from durable_agent._recording import CancelRequested, Spec
from durable_agent._redact import redact_exception
from durable_agent._stream_hooks import recorded
from durable_agent._tool_identity import tool_signatures
from durable_agent._tool_step import ToolStep
from durable_agent.errors import (
    RunCancelledError,
    RunExistsError,
    RunStateError,
    RunTimeoutError,
)
from durable_agent.fsm import FINAL_STATES, RunState, next_state
from durable_agent.human import Decision
from durable_agent.records import (
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    Event,
    Lease,
    LeaseTaken,
    Message,
    OutputFormat,
    RunHeader,
    StoredRun,
    TransitionEvent,
    utcnow,
)
from durable_agent.run import RunContext

if TYPE_CHECKING:
    pass

__all__ = ["RunExecution"]

_HANDOVER = frozenset({RunState.PENDING, RunState.MODEL_CALL})
"""Where a run may be handed over mid-way: no tool-call intent is open there."""


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
        link = self._tel.begin(None, lease)
        events: list[Event] = [
            CreatedEvent(
                seq=1,
                state=RunState.PENDING,
                messages=tuple(messages),
                output_format=output_format,
                tools=tool_signatures(self.tools),
                lease_taken=LeaseTaken(owner=owner.id, generation=1, at=utcnow()),
            ),
            TransitionEvent(
                seq=2, state=next_state(RunState.PENDING, "start"), trigger="start",
                traceparent=link,
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
        mark = self._tel.append_start()
        write, outcome = shielded_write(self.backend.create_run(header, events))
        try:
            await outcome
        except RunExistsError as exc:
            if write.done():  # it is: it finished raising this; read, so it is not logged
                write.exception()
            self._drop_claim()
            self._tel.end(None, exc)
            raise
        except BaseException as exc:
            self._tel.end(self.ctx, exc)
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
        recorded(self.run_id, events)
        self._tel.appended(mark, ctx, events, False)

    async def _record_landed(self, stored: StoredRun, error: BaseException) -> None:
        """Record ``error`` on a run whose create landed unseen, releasing its lease."""
        self.ctx, self.lease = RunContext.from_stored(stored), stored.header.lease
        await self._record_interruption_now(self.ctx, interruption(error))

    async def load(self) -> RunContext:
        """Read the run without taking its lease (for finished runs and inspection)."""
        stored = await self.backend.load_run(self.run_id)
        self._tel.loaded(stored)
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
            self._lease_taken = LeaseTaken(
                owner=self.lease.owner, generation=self.lease.generation, at=utcnow()
            )
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
        self._traceparent = self._tel.begin(ctx, self.lease)
        return ctx

    async def adopt(self, lease: Lease) -> RunContext:
        """Drive with ``lease``, which a worker's claim acquired (`Backend.claim_runs`); load.

        The claim *was* the acquisition, so the store is not asked again. If
        the load fails, or the caller is cancelled, the lease is released
        before the exception propagates.
        """
        await self._retry_owed()
        self._take_claim()
        self.lease = lease
        # The claim was this lease's acquisition: stamp it on the first write as
        # `acquire` does, so the log shows a worker's takeover like any other.
        self._lease_taken = LeaseTaken(owner=lease.owner, generation=lease.generation, at=utcnow())
        try:
            ctx = await self.load()
        except BaseException:
            self.lease = None
            try:
                owed = self.engine.owed
                await asyncio.shield(release_now(self.backend, lease, owed, self.run_id))
            finally:
                self._drop_claim()
            raise
        self.engine.owed.forget(self.run_id)
        self._resumed_in_model_call = ctx.state is RunState.MODEL_CALL
        self._traceparent = self._tel.begin(ctx, lease)
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
            self._tel.end(self.ctx)

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

    async def decide(
        self, decisions: Mapping[str, Decision], *, decided_by: str | None = None
    ) -> None:
        """Record decisions (already checked by `collect_decisions`) in one append.

        When they settle the last open requirement, the same append moves the
        run back to TOOL_EXEC (``decided``); nothing runs before it is durable.
        ``decided_by`` names who decided, on every decision event.
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
                        "decided_by": decided_by,
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
            self._tel.end(ctx)
            return ctx  # at rest already (decisions left the run WAITING)
        try:
            await self._guarded(ctx, timeout)
        except BaseException as exc:
            self._tel.end(ctx, exc)
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
            if ctx.state in _HANDOVER and self.stop_when is not None and self.stop_when():
                return  # no effect in flight: released as it is, for another process
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
