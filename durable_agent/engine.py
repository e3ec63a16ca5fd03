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

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from pydantic import BaseModel

from durable_agent._execution import RunExecution
from durable_agent._lease import OwedReleases
from durable_agent._names import check_new_run_id
from durable_agent._tool_identity import start_conflicts
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    ConfigurationError,
    DecisionError,
    RunBusyError,
    RunCancelledError,
    RunConflictError,
    RunExistsError,
    RunNotFoundError,
    RunStateError,
)
from durable_agent.fsm import RunState
from durable_agent.human import DecisionRequest, Requirement, collect_decisions
from durable_agent.models import ChatModel
from durable_agent.records import CreatedEvent, JSONValue, Lease, Message, OutputFormat
from durable_agent.retry import RetryPolicy, is_retryable
from durable_agent.run import RunContext
from durable_agent.tools import Tool

__all__ = ["Engine", "RetryPolicy", "RunExecution", "cancel_run", "decide_run", "is_retryable"]


def _ignore(ctx: RunContext) -> None:
    """The default ``observe``: nobody is watching."""


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
        agent_version: str | None = None,
        owner: LeaseOwner | None = None,
    ) -> None:
        self.backend = backend
        self.model = model
        self.retry = retry or RetryPolicy()
        self.lease_ttl = lease_ttl
        self.agent_name = agent_name
        self.agent_version = agent_version
        """Recorded on every tool intent, to tell which deploy started a call."""
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

    # -- one entry per user intent ------------------------------------------
    # The facade translates arguments and results; the sequence of store calls
    # for each intent is decided here, once (the workers use the same entries).

    async def start(
        self,
        run_id: str,
        messages: Sequence[Message],
        tools: Mapping[str, Tool],
        *,
        output_type: type[BaseModel] | None = None,
        output_format: OutputFormat | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        existing: bool = False,
        continue_changed: bool = False,
        timeout: float | None = None,
        observe: Callable[[RunContext], None] = _ignore,
    ) -> RunContext:
        """Store a new run with ``messages`` and drive it; return where it rests.

        With ``existing=True`` (the caller chose the id) a run already stored
        under ``run_id`` is continued instead: starting is idempotent. A run
        another caller creates between the check and the create is continued
        too. A stored run started with another task description, system
        prompt, tools or output format raises `RunConflictError` naming the
        difference, unless ``continue_changed``. ``observe`` sees the run
        whenever the engine learns more of it (after the create, after a
        failure), so a caller can always tell what the store holds. A new run's
        id a store could not keep intact raises `ConfigurationError` before
        anything is stored. Raises as `RunExecution.run` does.
        """
        start = (messages, tools, output_format, continue_changed)
        if existing:
            try:
                await self._check_same_start(run_id, *start)
            except RunNotFoundError:
                pass
            except ConfigurationError:
                # The store cannot even look it up (a JSON-file store's folder
                # names): say why no store takes it, if that is the reason.
                check_new_run_id(run_id, "Task(run_id=...)")
                raise
            else:
                return await self.resume(
                    run_id, tools, output_type=output_type, timeout=timeout, observe=observe
                )
        # Only a run about to be created: a run stored under an id refused now
        # (before the check existed) was continued above, by its id.
        check_new_run_id(run_id, "Task(run_id=...)")
        execution = self.execution(run_id, tools, output_type=output_type)
        try:
            await execution.create(
                messages, session_id=session_id, user_id=user_id, output_format=output_format
            )
        except RunExistsError:
            await self._check_same_start(run_id, *start)
            return await self.resume(
                run_id, tools, output_type=output_type, timeout=timeout, observe=observe
            )
        except BaseException:
            if execution.ctx is not None:  # it landed, and the interruption was recorded
                observe(execution.ctx)
            raise
        return await self._drive(execution, timeout, observe)

    async def resume(
        self,
        run_id: str,
        tools: Mapping[str, Tool],
        *,
        output_type: type[BaseModel] | None = None,
        decisions: DecisionRequest | None = None,
        timeout: float | None = None,
        observe: Callable[[RunContext], None] = _ignore,
    ) -> RunContext:
        """Continue a stored run, recording ``decisions`` first; return where it rests.

        DONE, and WAITING without decisions, are returned as stored (nothing
        runs); CANCELLED raises `RunCancelledError`. Decisions are checked
        before the lease is taken (bad input stores nothing) and again under it.
        Raises `RunNotFoundError`, `RunBusyError`, `DecisionError` and what
        `RunExecution.run` raises.
        """
        execution = self.execution(run_id, tools, output_type=output_type)
        ctx = await execution.load()
        observe(ctx)
        if decisions and ctx.state is not RunState.WAITING:
            raise DecisionError(
                f"run {run_id!r} is {ctx.state.value}, not WAITING: it has no requirement "
                "to decide; continue it without decisions"
            )
        match ctx.state:
            case RunState.DONE:
                return ctx
            case RunState.CANCELLED:
                raise RunCancelledError(run_id, ctx.cancel_reason or "cancelled")
            case RunState.WAITING:
                if not decisions:
                    return ctx
                decisions.check(run_id, ctx.open_requirements)  # nothing stored on bad input
            case RunState.PENDING | RunState.MODEL_CALL | RunState.TOOL_EXEC | RunState.ERROR:
                pass
        ctx = await execution.acquire()
        if decisions:
            try:
                # Checked again under the lease: another process may have decided meanwhile.
                await execution.decide(decisions.check(run_id, ctx.open_requirements))
            except BaseException:
                await execution.release()
                raise
        return await self._drive(execution, timeout, observe)

    async def run_claimed(
        self,
        run_id: str,
        tools: Mapping[str, Tool],
        lease: Lease,
        *,
        stop_when: Callable[[], bool] | None = None,
        observe: Callable[[RunContext], None] = _ignore,
    ) -> RunContext:
        """Drive a run whose lease a worker's claim acquired; return where it rests.

        ``stop_when`` is asked before each model call: True releases the run as
        it is (not at rest), for another worker to continue at once. Raises as
        `RunExecution.run` does.
        """
        execution = self.execution(run_id, tools)
        execution.stop_when = stop_when
        ctx = await execution.adopt(lease)
        observe(ctx)
        return await self._drive(execution, None, observe)

    async def _check_same_start(
        self,
        run_id: str,
        messages: Sequence[Message],
        tools: Mapping[str, Tool],
        output_format: OutputFormat | None,
        continue_changed: bool,
    ) -> None:
        """Raise `RunConflictError` if the stored ``run_id`` was started differently."""
        if continue_changed:
            await self.backend.get_run(run_id)  # it exists (RunNotFoundError otherwise)
            return
        stored = await self.backend.load_run(run_id)
        created = stored.events[0] if stored.events else None
        if isinstance(created, CreatedEvent):
            differences = start_conflicts(created, messages, tools, output_format)
            if differences:
                raise RunConflictError(run_id, differences)

    @staticmethod
    async def _drive(
        execution: RunExecution, timeout: float | None, observe: Callable[[RunContext], None]
    ) -> RunContext:
        # Observed only when the run raises: on success the caller gets the
        # context itself (building the observer's snapshot twice per run was
        # ~2% of benchmark (b)'s bytecodes).
        try:
            return await execution.run(timeout=timeout)
        except BaseException:
            if execution.ctx is not None:
                observe(execution.ctx)
            raise



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
    decided_by: str | None = None,
) -> RunState:
    """Record human decisions on a WAITING run from any process, running nothing.

    The same checks and records as ``Agent.continue_run_async(approvals=...)``;
    afterwards the run is WAITING with the rest, or TOOL_EXEC with nobody
    running it, for any ``continue_run_async`` (which has the tools) to pick
    up. Returns the state afterwards. Raises `DecisionError` for decisions that
    do not fit (nothing recorded) and `RunBusyError` when a live process holds
    the run. ``decided_by`` is stored on each decision event: who decided (a
    user name, a token's name), for the record.
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
        await execution.decide(decisions, decided_by=decided_by)
        return ctx.state
    finally:
        await execution.release()


def _recorder(
    backend: Backend, run_id: str, owner: LeaseOwner | None, lease_ttl: float
) -> RunExecution:
    engine = Engine(backend=backend, model=None, lease_ttl=lease_ttl, owner=owner)
    return engine.execution(run_id, {})
