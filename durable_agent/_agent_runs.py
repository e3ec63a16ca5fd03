"""`Agent`'s methods that act on a stored run by its id, from any process.

Deciding, cancelling, forking, loading, submitting for workers and waiting:
`AgentRunMethods` holds them, and `durable_agent.agent.Agent` inherits them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from durable_agent import _submit
from durable_agent.engine import cancel_run, decide_run
from durable_agent.errors import ConfigurationError, RunNotFoundError
from durable_agent.human import DecisionRequest, Requirement
from durable_agent.records import JSONValue
from durable_agent.run import RunOutput
from durable_agent.task import Task, check_run_id

if TYPE_CHECKING:
    from durable_agent.backend import Backend
    from durable_agent.engine import Engine
    from durable_agent.tools import Tool

__all__ = ["AgentRunMethods"]

_T = TypeVar("_T")


class AgentRunMethods:
    """The part of `Agent` that works on runs already stored: by id, in any process."""

    db: Backend
    name: str
    tools: dict[str, Tool]
    _engine: Engine

    if TYPE_CHECKING:

        async def _continue(
            self,
            run_id: str,
            task: Task | None,
            return_output: bool,
            decisions: DecisionRequest | None = None,
            timeout: float | None = None,
        ) -> Any: ...

    async def decide_run_async(
        self,
        run_id: str,
        *,
        requirements: Iterable[Requirement] = (),
        approvals: Mapping[str, bool | str] | None = None,
        results: Mapping[str, JSONValue] | None = None,
        inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> RunOutput:
        """Record human decisions on a WAITING run without running anything; return it.

        The same checks and records as `continue_run_async` with decisions,
        but nothing runs afterwards: the run stays WAITING with what is left,
        or waits in TOOL_EXEC for any `continue_run_async` (here or in another
        process) to go on. Raises `DecisionError` (nothing recorded) for
        decisions that do not fit.
        """
        check_run_id(run_id, "decide_run_async(run_id)")
        with self._naming_store(run_id):
            await decide_run(
                self.db,
                run_id,
                requirements=requirements,
                approvals=approvals,
                results=results,
                inputs=inputs,
                owner=self._engine.owner,
                lease_ttl=self._engine.lease_ttl,
            )
        return await self.get_run_async(run_id)

    def decide_run(
        self,
        run_id: str,
        *,
        requirements: Iterable[Requirement] = (),
        approvals: Mapping[str, bool | str] | None = None,
        results: Mapping[str, JSONValue] | None = None,
        inputs: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> RunOutput:
        """Synchronous twin of `decide_run_async`."""
        return self._sync(
            self.decide_run_async(
                run_id,
                requirements=requirements,
                approvals=approvals,
                results=results,
                inputs=inputs,
            )
        )

    async def cancel_run_async(
        self, run_id: str, *, reason: str = "cancelled by request"
    ) -> RunOutput:
        """Cancel a run from any process and return where it stands.

        The request is stored first. A run no live process holds is CANCELLED
        at once; one that is running stops at its next transition boundary (its
        current model or tool call may finish, no further one starts) and
        records CANCELLED itself. A cancelled run cannot be continued.
        """
        check_run_id(run_id, "cancel_run_async(run_id)")
        with self._naming_store(run_id):
            await cancel_run(
                self.db, run_id, reason=reason, owner=self._engine.owner,
                lease_ttl=self._engine.lease_ttl,
            )
        return await self.get_run_async(run_id)

    def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> RunOutput:
        """Synchronous twin of `cancel_run_async`."""
        return self._sync(self.cancel_run_async(run_id, reason=reason))

    async def fork_run_async(
        self, run_id: str, *, at_seq: int, new_run_id: str | None = None, run: bool = True,
        timeout: float | None = None,
    ) -> RunOutput:
        """Fork ``run_id`` at event ``at_seq`` into a new run and continue it with this agent.

        The fork holds the source's events up to ``at_seq`` (the source is
        untouched), marked ``forked_from``; what they recorded is reused, never
        redone; a call in flight at ``at_seq`` is in doubt under the fork's own
        keys (docs/forking.md). Returns the fork's `RunOutput` (``run=False``
        only stores it); raises as ``continue_run_async(return_output=True)``.
        """
        from durable_agent._fork import create_fork

        check_run_id(run_id, "fork_run_async(run_id)")
        with self._naming_store(run_id):
            fork = await create_fork(self.db, run_id, at_seq=at_seq, new_run_id=new_run_id,
                                     agent_name=self.name)
        if not run:
            return await self.get_run_async(fork.run_id)
        return await self._continue(fork.run_id, None, True, None, timeout)  # type: ignore[no-any-return]

    def fork_run(
        self, run_id: str, *, at_seq: int, new_run_id: str | None = None, run: bool = True,
        timeout: float | None = None,
    ) -> RunOutput:
        """Synchronous twin of `fork_run_async`."""
        return self._sync(self.fork_run_async(
            run_id, at_seq=at_seq, new_run_id=new_run_id, run=run, timeout=timeout))

    async def get_run_async(self, run_id: str) -> RunOutput:
        """Load a run's current outcome without running anything."""
        check_run_id(run_id, "get_run_async(run_id)")
        execution = self._engine.execution(run_id, self.tools)
        with self._naming_store(run_id):
            return RunOutput.from_context(await execution.load())

    def get_run(self, run_id: str) -> RunOutput:
        """Synchronous twin of `get_run_async`."""
        return self._sync(self.get_run_async(run_id))

    # -- waiting, for runs submitted to workers ---------------------------------

    async def wait_run_async(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        output_type: type[BaseModel] | None = None,
    ) -> RunOutput:
        """Wait, from any process, until the run is DONE, ERROR, WAITING or CANCELLED.

        Woken by the store where it can, else polling with a growing pause.
        Raises `WaitTimeoutError` after ``timeout`` seconds (nothing recorded)
        and `RunNotFoundError` for an unknown id.
        """
        check_run_id(run_id, "wait_run_async(run_id)")
        with self._naming_store(run_id):
            await _submit.wait_for_rest(self.db, run_id, timeout)
        return _submit.parsed(await self.get_run_async(run_id), output_type)

    def wait_run(self, run_id: str, *, timeout: float | None = None) -> RunOutput:
        """Synchronous twin of `wait_run_async`."""
        return self._sync(self.wait_run_async(run_id, timeout=timeout))

    # -- internals shared with the facade ------------------------------------

    @contextlib.contextmanager
    def _naming_store(self, run_id: str) -> Iterator[None]:
        """Say which store was asked when a run is not found: the usual cause is another one."""
        try:
            yield
        except RunNotFoundError as exc:
            if exc.store is not None:
                raise
            raise RunNotFoundError(
                run_id,
                "check the run id, and that this agent's db= is the store the run was "
                "started in (runs are not shared between stores)",
                store=repr(self.db),
            ) from None

    @staticmethod
    def _sync(coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        coro.close()
        raise ConfigurationError(
            "the synchronous do()/continue_run() cannot run inside an event loop; "
            "await do_async()/continue_run_async() instead"
        )
