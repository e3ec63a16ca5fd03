"""`Agent` and `Task`: the public facade (the seed API).

```python
db = SqliteBackend(db_file="durable.db", session_id="s1", user_id="u1")
agent = Agent("openai/gpt-4o-mini", db=db, retry=1)
task = Task("What is 7 + 7? Reply with just the number.")
try:
    result = await agent.do_async(task, return_output=True)
except Exception:
    run_id = agent.last_run.run_id
    result = await agent.continue_run_async(run_id=run_id, return_output=True)
```
"""

from __future__ import annotations

import dataclasses
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from pydantic import BaseModel

from durable_agent import _submit
from durable_agent._agent_runs import AgentRunMethods
from durable_agent._names import check_name
from durable_agent._submit import RunHandle
from durable_agent.backend import Backend
from durable_agent.engine import Engine, RetryPolicy
from durable_agent.errors import (
    ConfigurationError,
    RunCancelledError,
    RunWaitingError,
)
from durable_agent.fsm import RunState
from durable_agent.human import DecisionRequest, Requirement
from durable_agent.models import ChatModel, resolve_model
from durable_agent.records import JSONValue, Message, SystemMessage, UserMessage
from durable_agent.run import RunContext, RunOutput
from durable_agent.task import Task, check_run_id
from durable_agent.tools import Tool, toolset

if TYPE_CHECKING:
    from durable_agent._run_stream import RunStream
    from durable_agent.streaming import StreamEvent

__all__ = ["Agent", "DurabilityWarning", "RunHandle", "Task"]


class DurabilityWarning(UserWarning):
    """Runs are kept somewhere that does not survive the process."""


_warned_in_memory = False


class Agent(AgentRunMethods):
    """Runs tasks durably: every transition is stored before the next effect.

    Args:
        model: a ``"provider/model"`` string or a `ChatModel` (``ScriptedModel``
            offline).
        db: a `Backend`, a store URL such as ``"sqlite:///durable.db"``, or None
            for an in-memory store that does not survive the process (warns).
        retry: total attempts per model call (1 = no retry), or a `RetryPolicy`.
        tools: functions or `Tool` objects the model may call in every task.
        system_prompt: instructions stored at the start of every run.
        name: recorded on each run this agent creates.
        version: your deploy's version, recorded on every tool intent (see upgrading).
        lease_ttl: seconds a crashed process on another host keeps a run locked.
    """

    def __init__(
        self,
        model: str | ChatModel,
        *,
        db: Backend | str | None = None,
        retry: int | RetryPolicy = 3,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        system_prompt: str | None = None,
        name: str = "agent",
        version: str | None = None,
        lease_ttl: float = 30.0,
    ) -> None:
        if isinstance(model, str):
            chat_model = resolve_model(model)
        elif isinstance(model, ChatModel):
            chat_model = model
        else:
            raise ConfigurationError(
                f"Agent(model=...) must be a 'provider/model' string or a ChatModel, "
                f"got {type(model).__name__}"
            )
        if isinstance(retry, bool) or not isinstance(retry, int | RetryPolicy):
            raise ConfigurationError(
                f"Agent(retry=...) must be an int or RetryPolicy, got {retry!r}"
            )
        policy = retry if isinstance(retry, RetryPolicy) else RetryPolicy(attempts=retry)
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigurationError("Agent(system_prompt=...) must be a str or None")
        check_name(name, "Agent(name=...)")
        if version is not None and not isinstance(version, str):
            raise ConfigurationError(f"Agent(version=...) must be a str or None, got {version!r}")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float) or lease_ttl <= 0:
            raise ConfigurationError(
                f"Agent(lease_ttl=...) must be positive seconds, got {lease_ttl!r}"
            )
        self.db = self._open_db(db)
        self.model = chat_model
        self.tools = toolset(tools, owner="Agent")
        self.system_prompt = system_prompt
        self.name = name
        self._engine = Engine(
            backend=self.db,
            model=chat_model,
            retry=policy,
            lease_ttl=float(lease_ttl),
            agent_name=name,
            agent_version=version,
        )
        self.last_run: RunOutput | None = None
        """The outcome of the latest run this agent did or continued, failed ones included.

        Set before a new run's first write (PENDING, no events yet), so its
        ``run_id`` is known even when ``do_async`` is cancelled or fails at once.
        """

    @staticmethod
    def _open_db(db: Backend | str | None) -> Backend:
        global _warned_in_memory
        if isinstance(db, Backend):
            return db
        if isinstance(db, str):
            from durable_agent.registry import open_backend

            return open_backend(db)
        if db is None:
            from durable_agent.backends.memory import MemoryBackend

            if not _warned_in_memory:
                _warned_in_memory = True
                warnings.warn(
                    "Agent(db=None) keeps runs in memory: they do not survive this process. "
                    "Pass db='sqlite:///durable.db' (or a backend) for durable runs.",
                    DurabilityWarning,
                    stacklevel=3,
                )
            return MemoryBackend()
        raise ConfigurationError(
            f"Agent(db=...) must be a Backend, a store URL or None, got {type(db).__name__}"
        )

    @property
    def _agent_run_output(self) -> RunOutput | None:
        """Alias of `last_run`, kept for code written against the seed API."""
        return self.last_run

    # -- doing --------------------------------------------------------------

    @overload
    async def do_async(
        self, task: Task | str, *, return_output: Literal[True], timeout: float | None = None
    ) -> RunOutput: ...
    @overload
    async def do_async(
        self,
        task: Task | str,
        *,
        return_output: Literal[False] = False,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    async def do_async(
        self, task: Task | str, *, return_output: bool, timeout: float | None = None
    ) -> Any: ...
    async def do_async(
        self, task: Task | str, *, return_output: bool = False, timeout: float | None = None
    ) -> Any:
        """Run ``task`` to its final answer and return it (or the `RunOutput`).

        If the task names a ``run_id`` that already exists, that run is
        continued instead. A failure is recorded, then raised as
        `RunFailedError`; `last_run` describes the run either way.

        A run that pauses for a human returns a WAITING `RunOutput` with
        ``return_output=True`` and raises `RunWaitingError` otherwise. After
        ``timeout`` seconds the run records a timeout error (ERROR, resumable)
        and raises `RunTimeoutError`. If the awaiting task is cancelled, the
        interruption is recorded and `asyncio.CancelledError` propagates.

        ``task.run_id`` and ``last_run.run_id`` are set before anything is
        written, so after any failure or cancellation ``do_async(task)`` again
        (or ``continue_run_async(run_id=...)``) picks the run up.
        """
        if isinstance(task, str):
            task = Task(task)
        elif not isinstance(task, Task):
            raise ConfigurationError(
                f"do_async() takes a Task or a str, got {type(task).__name__}"
            )
        existing = task.run_id is not None
        # The id is on the task and on `last_run` before the first write: a
        # caller whose do_async is cancelled or fails can always find the run
        # (doing the task again continues it, or starts it if it never landed).
        task.run_id = task.run_id or uuid.uuid4().hex
        return await self._do_task(
            task, existing=existing, return_output=return_output, timeout=timeout
        )

    async def _do_task(
        self, task: Task, *, existing: bool, return_output: bool, timeout: float | None
    ) -> Any:
        """`do_async` of ``task``, whose ``run_id`` is set; ``existing``: the caller chose it.

        Only a chosen id can name a stored run, so only then is the store asked
        for one first (a fresh id is created straight away: one write, no read).
        """
        run_id = task.run_id
        assert run_id is not None
        self.last_run = RunOutput.pending(run_id, self.db.session_id, self.db.user_id)
        messages: list[Message] = []
        if self.system_prompt:
            messages.append(SystemMessage(content=self.system_prompt))
        messages.append(UserMessage(content=task.description))
        ctx = await self._engine.start(
            run_id,
            messages,
            self._tools_for(task),
            output_type=task.response_format,
            output_format=task.output_format(),
            session_id=self.db.session_id,
            user_id=self.db.user_id,
            existing=existing,
            continue_changed=task.continue_changed,
            timeout=timeout,
            observe=self._observe,
        )
        return self._result(ctx, task.response_format, return_output)

    def do(
        self, task: Task | str, *, return_output: bool = False, timeout: float | None = None
    ) -> Any:
        """Synchronous twin of `do_async` (not from inside a running event loop)."""
        return self._sync(self.do_async(task, return_output=return_output, timeout=timeout))

    async def continue_run_async(
        self,
        run_id: str | None = None,
        *,
        task: Task | None = None,
        return_output: bool = False,
        requirements: Iterable[Requirement] = (),
        approvals: Mapping[str, bool | str] | None = None,
        results: Mapping[str, JSONValue] | None = None,
        inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Continue a stored run, in this process or any other.

        DONE returns the stored output without any model or tool call; ERROR
        resumes at the state that failed; a run whose owner process died (or
        whose lease expired) is taken over. A run another live process holds
        raises `RunBusyError`; an unknown id `RunNotFoundError`; a cancelled
        one `RunCancelledError`.

        A WAITING run takes human decisions: ``requirements`` (the objects of
        ``RunOutput.requirements``, decided with their methods), or by id
        ``approvals={id: True | False | "reason"}``, ``results={id: value}``,
        ``inputs={id: {field: value}}``. Decisions are recorded before anything
        runs; the run goes on once all are decided and stays WAITING with the
        rest otherwise. ``timeout`` bounds this call as in `do_async`.
        """
        if task is not None and not isinstance(task, Task):
            raise ConfigurationError(f"continue_run_async(task=...) takes a Task, got {task!r}")
        if run_id is None and task is not None:
            run_id = task.run_id
        if run_id is None:
            raise ConfigurationError(
                "continue_run_async() needs run_id=... or a task that has been started "
                "(task.run_id is set once do_async starts it)"
            )
        check_run_id(run_id, "continue_run_async(run_id=...)")
        decisions = DecisionRequest(tuple(requirements), approvals, results, inputs)
        return await self._continue(run_id, task, return_output, decisions, timeout)

    def continue_run(
        self,
        run_id: str | None = None,
        *,
        task: Task | None = None,
        return_output: bool = False,
        requirements: Iterable[Requirement] = (),
        approvals: Mapping[str, bool | str] | None = None,
        results: Mapping[str, JSONValue] | None = None,
        inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Synchronous twin of `continue_run_async` (same keyword arguments)."""
        return self._sync(
            self.continue_run_async(
                run_id=run_id,
                task=task,
                return_output=return_output,
                requirements=requirements,
                approvals=approvals,
                results=results,
                inputs=inputs,
                timeout=timeout,
            )
        )

    def stream_async(self, task: Task | str, *, timeout: float | None = None) -> RunStream:
        """Run ``task`` as `do_async` does, yielding its events as they happen.

        ``async with agent.stream_async(task) as stream: async for event in stream``:
        text deltas, tool calls, stored records, then `Finished` (or `Paused`)
        with the same `RunOutput` as ``do_async(..., return_output=True)``.
        Deltas are never stored; each answer is, complete. Leaving early records
        the interruption like a cancellation. See `durable_agent.streaming`.
        """
        from durable_agent._run_stream import stream_new

        return stream_new(self, task, timeout)

    def continue_stream_async(
        self,
        run_id: str | None = None,
        *,
        task: Task | None = None,
        requirements: Iterable[Requirement] = (),
        approvals: Mapping[str, bool | str] | None = None,
        results: Mapping[str, JSONValue] | None = None,
        inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
        timeout: float | None = None,
    ) -> RunStream:
        """`continue_run_async` as a stream of events (the arguments are the same).

        A model call the run was in when its process died is asked again: its
        `ModelCallStarted` says ``repeat=True`` and a `TextDiscarded` tells the
        consumer that text shown from the lost stream is void.
        """
        from durable_agent._run_stream import stream_continue

        if task is not None and not isinstance(task, Task):
            raise ConfigurationError(f"continue_stream_async(task=...) takes a Task, got {task!r}")
        run_id = run_id if run_id is not None or task is None else task.run_id
        if run_id is None:
            raise ConfigurationError("continue_stream_async() needs run_id=... or a started task")
        check_run_id(run_id, "continue_stream_async(run_id=...)")
        decisions = DecisionRequest(tuple(requirements), approvals, results, inputs)
        return stream_continue(self, run_id, task, timeout, decisions)

    def follow(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[StreamEvent]:
        """The stored events of ``run_id`` after ``after_seq`` as they land, from any process.

        Ends when the run comes to rest; see `durable_agent.follow`.
        """
        from durable_agent._follow import follow

        return follow(self.db, run_id, after_seq=after_seq)

    # -- submitting, for workers (durable_agent._submit) ---------------------

    async def submit_async(
        self,
        task: Task | str,
        *,
        queue: str = "default",
        priority: int = 0,
        not_before: datetime | None = None,
    ) -> RunHandle:
        """Store ``task`` as a PENDING run for a `Worker` and return its `RunHandle` at once.

        Nothing runs here: a worker serving this agent's ``name`` and ``queue``
        claims it, highest ``priority`` first, not before ``not_before``.
        """
        return await _submit.submit(
            self, task, queue=queue, priority=priority, not_before=not_before
        )

    def submit(
        self,
        task: Task | str,
        *,
        queue: str = "default",
        priority: int = 0,
        not_before: datetime | None = None,
    ) -> RunHandle:
        """Synchronous twin of `submit_async`."""
        return self._sync(
            self.submit_async(task, queue=queue, priority=priority, not_before=not_before)
        )

    # -- closing ------------------------------------------------------------

    async def close_async(self) -> None:
        """Close the agent's store (``db``), also one passed in as a `Backend`.

        ``async with Agent(...) as agent:`` does it on exit. Agents that share
        one store should not close it each: close the store once instead
        (``async with db:``). Closing twice is harmless.
        """
        await self.db.close()

    def close(self) -> None:
        """Synchronous twin of `close_async` (``with Agent(...) as agent:`` calls it)."""
        self._sync(self.close_async())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_async()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _tools_for(self, task: Task | None) -> dict[str, Tool]:
        tools = dict(self.tools)
        if task is not None:
            tools.update(task.tools)
        return tools

    def _observe(self, ctx: RunContext) -> None:
        self.last_run = RunOutput.from_context(ctx)

    async def _continue(
        self,
        run_id: str,
        task: Task | None,
        return_output: bool,
        decisions: DecisionRequest | None = None,
        timeout: float | None = None,
    ) -> Any:
        if task is not None:
            task.run_id = run_id
        output_type = task.response_format if task is not None else None
        with self._naming_store(run_id):
            ctx = await self._engine.resume(
                run_id,
                self._tools_for(task),
                output_type=output_type,
                decisions=decisions,
                timeout=timeout,
                observe=self._observe,
            )
        return self._result(ctx, output_type, return_output)

    def _result(
        self, ctx: RunContext, output_type: type[BaseModel] | None, return_output: bool
    ) -> Any:
        output = self.last_run = RunOutput.from_context(ctx)
        if output_type is not None and output.output is not None:
            parsed = output_type.model_validate_json(output.output)
            output = self.last_run = dataclasses.replace(output, parsed=parsed)
        if return_output:
            return output
        match output.state:
            case RunState.WAITING:
                # A pause is never mistaken for an answer.
                raise RunWaitingError(output.run_id, output.requirements)
            case RunState.CANCELLED:
                raise RunCancelledError(output.run_id, ctx.cancel_reason or "cancelled")
            case _:
                return output.parsed if output.parsed is not None else output.output
