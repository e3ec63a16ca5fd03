"""Submitting runs for workers, and waiting, from any process, for a run to come to rest.

`submit` stores a PENDING run with no lease (DESIGN.md §6: the store is the
queue); a `durable_agent.worker.Worker` serving the run's agent and queue
claims it. `wait_for_rest` waits until the run is DONE, ERROR, WAITING or
CANCELLED, woken by the store where it can (`Capability.WAKE_UP`: Redis's
stream, PostgreSQL's LISTEN/NOTIFY, memory) and by a poll with a growing
pause otherwise (SQLite, JSON files), never a busy loop. Even woken stores are
polled behind the wake-ups, since a wake-up can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, TypeVar

from pydantic import BaseModel

from durable_agent._names import check_name, check_new_run_id
from durable_agent.backend import Backend, Capability
from durable_agent.errors import (
    ConfigurationError,
    RunExistsError,
    RunNotFoundError,
    WaitTimeoutError,
)
from durable_agent.fsm import RunState
from durable_agent.records import CreatedEvent, Message, RunHeader, SystemMessage, UserMessage
from durable_agent.run import RunOutput
from durable_agent.task import Task

if TYPE_CHECKING:
    from durable_agent.agent import Agent

__all__ = ["AT_REST", "RunHandle", "parsed", "poll", "submit", "wait_for_rest"]

AT_REST: Final = frozenset({RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED})
"""States a run rests in: nobody drives it until someone decides, resumes or deletes it."""

_FIRST_PAUSE: Final = 0.02
_LONGEST_PAUSE: Final = 0.5
"""Polling without wake-ups: 20 ms growing to 0.5 s (a finished run is seen within that)."""
_LONGEST_WAKE_WAIT: Final = 5.0
"""With wake-ups, the store is looked at again at least this often (a wake-up may be lost)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunHandle:
    """A submitted run: its id, and a way to wait for it from this process.

    Any other process can wait for it too, by id: ``agent.wait_run_async(run_id)``.
    """

    run_id: str
    agent: Agent
    output_type: type[BaseModel] | None = None

    async def result(self, timeout: float | None = None) -> RunOutput:
        """Wait until the run comes to rest (DONE, ERROR, WAITING, CANCELLED) and return it.

        Raises `WaitTimeoutError` after ``timeout`` seconds (nothing is
        recorded; the run goes on). A structured answer is parsed with the
        task's ``response_format`` into ``parsed``.
        """
        return await self.agent.wait_run_async(
            self.run_id, timeout=timeout, output_type=self.output_type
        )

    def result_sync(self, timeout: float | None = None) -> RunOutput:
        """Synchronous twin of `result` (not from inside a running event loop)."""
        return self.agent._sync(self.result(timeout))


def _check_options(queue: object, priority: object, not_before: object) -> None:
    check_name(queue, "submit(queue=...)")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"submit(priority=...) must be an int, got {priority!r}")
    if not_before is not None and (
        not isinstance(not_before, datetime) or not_before.tzinfo is None
    ):
        raise ConfigurationError(
            f"submit(not_before=...) must be an aware datetime or None, got {not_before!r} "
            "(use datetime.now(UTC) + timedelta(...))"
        )


async def submit(
    agent: Agent,
    task: Task | str,
    *,
    queue: str,
    priority: int,
    not_before: datetime | None,
) -> RunHandle:
    """Store ``task`` as a PENDING run of ``agent`` for a worker; return its handle at once.

    A task whose ``run_id`` is already stored is not submitted twice: its
    handle is returned. A new run's id a store could not keep intact is
    refused (`ConfigurationError`, nothing stored). Task-level tools are
    refused: the worker that runs the task knows only its agent's tools.
    """
    if isinstance(task, str):
        task = Task(task)
    elif not isinstance(task, Task):
        raise ConfigurationError(f"submit() takes a Task or a str, got {type(task).__name__}")
    _check_options(queue, priority, not_before)
    if task.tools:
        raise ConfigurationError(
            f"submit() cannot send the task's own tools ({', '.join(sorted(task.tools))}) to a "
            "worker: a worker runs the tools of its Agent; give them to Agent(tools=...)"
        )
    run_id = task.run_id or uuid.uuid4().hex
    task.run_id = run_id
    handle = RunHandle(run_id=run_id, agent=agent, output_type=task.response_format)
    try:
        check_new_run_id(run_id, "Task(run_id=...)")
    except ConfigurationError as refused:
        # A run stored under it before the check was submitted already: not twice.
        try:
            await agent.db.get_run(run_id)
        except (RunNotFoundError, ConfigurationError):  # or the store cannot look it up
            raise refused from None
        return handle
    messages: list[Message] = []
    if agent.system_prompt:
        messages.append(SystemMessage(content=agent.system_prompt))
    messages.append(UserMessage(content=task.description))
    db = agent.db
    header = RunHeader(
        run_id=run_id,
        session_id=db.session_id,
        user_id=db.user_id,
        agent_name=agent.name,
        state=RunState.PENDING,
        seq=1,
        queue=queue,
        priority=priority,
        not_before=not_before,
    )
    created = CreatedEvent(
        seq=1, state=RunState.PENDING, messages=tuple(messages), output_format=task.output_format()
    )
    with contextlib.suppress(RunExistsError):  # submitted before (the caller chose the id)
        await db.create_run(header, [created])
    return handle


async def poll(
    db: Backend,
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float | None,
    longest_pause: float = _LONGEST_PAUSE,
) -> T | None:
    """Call ``check`` until it returns a value, waiting for the store between calls.

    The change token is taken before each check, so a change made while
    ``check`` runs wakes the next wait at once. Returns None after ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    woken = Capability.WAKE_UP in db.capabilities
    pause = _FIRST_PAUSE
    while True:
        token = await db.wait_for_change(None, timeout=0) if woken else None
        found = await check()
        if found is not None:
            return found
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            return None
        if token is not None:
            wait = _LONGEST_WAKE_WAIT if left is None else min(left, _LONGEST_WAKE_WAIT)
            await db.wait_for_change(token, timeout=wait)
        else:
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 1.5, longest_pause)


def parsed(output: RunOutput, output_type: type[BaseModel] | None) -> RunOutput:
    """``output`` with its final answer parsed as ``output_type`` (when both are there)."""
    if output_type is None or output.output is None:
        return output
    return dataclasses.replace(output, parsed=output_type.model_validate_json(output.output))


async def wait_for_rest(db: Backend, run_id: str, timeout: float | None) -> RunHeader:
    """Wait until run ``run_id`` is at rest; return its header. `WaitTimeoutError` on timeout."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ConfigurationError(f"wait timeout must be seconds >= 0 or None, got {timeout!r}")
    last: list[RunHeader] = []

    async def at_rest() -> RunHeader | None:
        header = await db.get_run(run_id)
        last[:] = [header]
        return header if header.state in AT_REST else None

    found = await poll(db, at_rest, timeout=timeout)
    if found is None:
        state = last[0].state.value if last else "unknown"
        raise WaitTimeoutError(run_id, state, float(timeout or 0))
    return found
