"""The engine: load → restore → decide → perform → append → repeat.

It owns the durability rules of DESIGN.md §3:

1. *Intent before effect*: the event that enters MODEL_CALL, and a
   `ToolStartedEvent` per tool call, are durable before the call starts.
2. *Result before the next effect*: a model answer or tool result is appended
   before anything else external starts.
3. *A recorded result is never recomputed*: a resumed run only performs the
   effects its log has no result for.
5. *One writer per run*: every append carries the expected ``seq`` and the
   lease generation; a lease is renewed by each append and by a heartbeat only
   while one effect outlasts a third of its TTL.
7. *Failures are recorded, not swallowed*: a model or tool failure is appended
   as a `FailedEvent` before `RunFailedError` reaches the caller.

The engine never imports a concrete backend or a vendor SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    ConfigurationError,
    ModelError,
    OutputValidationError,
    RunBusyError,
    RunFailedError,
    RunStateError,
    ToolArgumentsError,
    ToolRetry,
)
from durable_agent.fsm import RunState, next_state
from durable_agent.models import ChatModel, OutputSchema
from durable_agent.records import (
    CreatedEvent,
    ErrorInfo,
    Event,
    FailedEvent,
    Lease,
    Message,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputFormat,
    OutputRejectedEvent,
    RunHeader,
    ToolCallPart,
    ToolFinishedEvent,
    ToolResultMessage,
    ToolStartedEvent,
    TransitionEvent,
    UserMessage,
)
from durable_agent.run import RunContext
from durable_agent.tools import Tool, ToolContext

__all__ = ["Engine", "RetryPolicy", "RunExecution", "is_retryable"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a model call is retried.

    ``attempts`` is the total number of attempts (1 = no retry). Delays grow
    exponentially from ``initial_delay`` with ``jitter`` (a fraction added at
    random), capped at ``max_delay``; a provider's ``retry_after`` is honoured
    up to the cap. Only errors `is_retryable` accepts are retried.
    """

    attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"retry attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigurationError(
                f"retry={self.attempts}: the total number of attempts must be at least 1 "
                "(1 means no retry)"
            )
        if self.initial_delay < 0 or self.max_delay < 0 or self.jitter < 0:
            raise ConfigurationError("retry delays and jitter must not be negative")

    def delay_for(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        hinted = getattr(error, "retry_after", None)
        if isinstance(hinted, int | float) and hinted >= 0:
            return min(float(hinted), self.max_delay)
        base = self.initial_delay * self.multiplier ** (attempt - 1)
        return min(base * (1 + random.random() * self.jitter), self.max_delay)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt of a model call may succeed after ``error``."""
    if isinstance(error, ModelError):
        return error.retryable
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    return bool(getattr(error, "retryable", False))


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name; Z is a zombie:
    # killed and not yet reaped, so it will never write again.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


_Spec = tuple[type[Any], str | None, dict[str, Any]]
"""An event to build: its class, its trigger (None: no transition) and its fields."""


class Engine:
    """Runs agent runs against one backend, model and tool set. Shared by many runs."""

    def __init__(
        self,
        *,
        backend: Backend,
        model: ChatModel,
        retry: RetryPolicy,
        lease_ttl: float,
        agent_name: str,
    ) -> None:
        self.backend = backend
        self.model = model
        self.retry = retry
        self.lease_ttl = lease_ttl
        self.agent_name = agent_name
        self._owner = LeaseOwner.current()

    @property
    def owner(self) -> LeaseOwner:
        """This process's lease owner (renewed after a fork, since the pid changed)."""
        if self._owner.pid != os.getpid():
            self._owner = LeaseOwner.current()
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
        self.ctx: RunContext | None = None
        self.lease: Lease | None = None
        self.loaded_seq = 0
        """The seq the run had when this execution loaded it (0 for a new run)."""
        self._lock = asyncio.Lock()
        self._live_intents: set[str] = set()
        self._resumed_in_model_call = False
        self._heartbeat_error: BaseException | None = None

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
        """Store a new run in PENDING with its input, holding its lease from the start."""
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
        header = RunHeader(
            run_id=self.run_id,
            session_id=session_id,
            user_id=user_id,
            agent_name=self.engine.agent_name,
            state=RunState.PENDING,
            seq=1,
            lease=lease,
            lease_generation=1,
        )
        event = CreatedEvent(
            seq=1, state=RunState.PENDING, messages=tuple(messages), output_format=output_format
        )
        await self.backend.create_run(header, [event])
        ctx = RunContext.from_header(header)
        ctx.apply(event)
        self.ctx, self.lease = ctx, lease

    async def load(self) -> RunContext:
        """Read the run without taking its lease (for DONE runs and inspection)."""
        stored = await self.backend.load_run(self.run_id)
        self.ctx = RunContext.from_stored(stored)
        self.loaded_seq = self.ctx.seq
        return self.ctx

    async def acquire(self) -> RunContext:
        """Take the lease (taking over from a dead owner on this host) and load the run."""
        self.lease = await self._acquire_lease()
        try:
            ctx = await self.load()
        except BaseException:
            await self.release()
            raise
        self._resumed_in_model_call = ctx.state is RunState.MODEL_CALL
        return ctx

    async def _acquire_lease(self) -> Lease:
        owner = self.engine.owner
        ttl = self.engine.lease_ttl
        try:
            return await self.backend.acquire_lease(self.run_id, owner, ttl=ttl)
        except RunBusyError:
            header = await self.backend.get_run(self.run_id)
            held = header.lease
            if (
                held is None
                or held.expires_at <= time.time()
                or (held.host == owner.host and not _process_alive(held.pid))
            ):
                # The holder is gone (or its lease lapsed meanwhile): take over now
                # instead of waiting out the TTL. `takeover` is a compare-and-set
                # on the generation, so of two processes racing here one wins.
                return await self.backend.acquire_lease(
                    self.run_id, owner, ttl=ttl, takeover=header.lease_generation
                )
            raise

    async def release(self) -> None:
        """Give the lease up; the run stays as stored."""
        lease, self.lease = self.lease, None
        if lease is not None:
            await self.backend.release_lease(self.run_id, lease)

    # -- driving ------------------------------------------------------------

    async def run(self) -> RunContext:
        """Drive the run until DONE, releasing the lease however it ends.

        Raises `RunFailedError` (recorded in the store) when a model or tool
        call fails, and store errors as they are.
        """
        ctx = self._context()
        try:
            if ctx.state is RunState.ERROR:
                await self._append((TransitionEvent, "resume", {}))
            while True:
                match ctx.state:
                    case RunState.PENDING:
                        await self._append((TransitionEvent, "start", {}))
                    case RunState.MODEL_CALL:
                        await self._model_step(ctx)
                    case RunState.TOOL_EXEC:
                        await self._tool_step(ctx)
                    case RunState.DONE:
                        return ctx
                    case RunState.WAITING:
                        raise RunStateError(
                            ctx.run_id,
                            ctx.state.value,
                            "it waits for a human decision, which this version cannot "
                            "take yet; the run is kept as stored",
                        )
                    case RunState.CANCELLED | RunState.ERROR:
                        raise RunStateError(
                            ctx.run_id, ctx.state.value, "it cannot be driven further"
                        )
        finally:
            await asyncio.shield(self._release_quietly())

    async def _release_quietly(self) -> None:
        # A release that fails must not hide the exception that ended the run;
        # the lease then simply expires after its TTL.
        try:
            await self.release()
        except Exception:
            if self._heartbeat_error is None:
                raise

    def _context(self) -> RunContext:
        if self.ctx is None or self.lease is None:
            raise RuntimeError("RunExecution.run() needs create() or acquire() first")
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
            self.lease = await self.backend.append(
                ctx.run_id, events, expected_seq=ctx.seq, lease=self.lease
            )
            ctx.apply_all(events)

    async def _model_step(self, ctx: RunContext) -> None:
        engine = self.engine
        definitions = [t.definition() for t in self.tools.values()]
        fmt = ctx.output_format
        schema = OutputSchema(fmt.name, fmt.json_schema, fmt.description) if fmt else None
        repeated, self._resumed_in_model_call = self._resumed_in_model_call, False
        attempt = 1
        while True:
            started = time.perf_counter()
            try:
                async with self._keepalive():
                    response = await engine.model.request(
                        tuple(ctx.messages), tools=definitions, output_schema=schema
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
                "latency_ms": (time.perf_counter() - started) * 1000,
                "repeated": repeated,
            }
            calls = response.message.tool_calls
            if not calls:
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
                            "model": response.model, "usage": response.usage,
                            "attempt": attempt,
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
            # The intents ride in the same atomic append as the answer that asks
            # for the calls: one write instead of two, and rule 1 still holds
            # because the calls start only after this append returns.
            await self._append(
                (ModelResponseEvent, "tool_calls", answer),
                *((ToolStartedEvent, None, {"call_id": c.id, "name": c.name}) for c in calls),
            )
            self._live_intents.update(c.id for c in calls)
            return

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

    async def _tool_step(self, ctx: RunContext) -> None:
        calls = list(ctx.pending_calls.values())
        if not calls:
            await self._append((TransitionEvent, "tools_done", {}))
            return
        again = [c for c in calls if c.id not in self._live_intents]
        if again:
            # Intents from an earlier process or attempt with no result: the call
            # may have run. Tools are at-least-once (DESIGN.md §3 rule 4); the
            # new intent records the re-run with the same idempotency key.
            await self._append(
                *(
                    (ToolStartedEvent, None, {"call_id": c.id, "name": c.name,
                                              "attempt": ctx.call_attempts.get(c.id, 1) + 1})
                    for c in again
                )
            )
            self._live_intents.update(c.id for c in again)
        try:
            async with self._keepalive(), asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._run_call(ctx, c)) for c in calls]
        except BaseExceptionGroup as grouped:
            raise grouped.exceptions[0] from None
        self._live_intents.clear()
        failures = [(c, t.result()) for c, t in zip(calls, tasks, strict=True) if t.result()]
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

    async def _run_call(self, ctx: RunContext, call: ToolCallPart) -> Exception | None:
        """Run one call and append its result; return the tool's exception instead of raising.

        Store errors propagate: without a durable result nothing else may start.
        """
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
                content = await tool.call(call.arguments, tool_ctx)
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
            {"result": result, "duration_ms": (time.perf_counter() - started) * 1000},
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

