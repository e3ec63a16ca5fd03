"""Who continues a run the page decided or resumed: the fleet first, else the page's agent.

The store is the queue (DESIGN.md §6): a run that is not at rest and holds no
lease is what a `durable_agent.worker.Worker` claims. So the page always hands
a run to the fleet first. A decided run already is claimable once its last
decision is recorded; a failed one gets its ``resume`` transition recorded,
with who asked for it, and its lease released in the same write
(`durable_agent._worker_retry.hand_over`, what a stopping worker does).

Only then, when the inspector was given an agent of the run's name
(``--agent module:attr``), it waits up to ``fleet_wait`` seconds for a worker
to claim the run, and continues it in the web process if none did. Why a
claim and not a look at the registered workers: a registration
(`Backend.register_worker`) names no agent and the contract has no way to read
it, so the store cannot say whether a worker serves this agent; a claim is the
proof. Two claimants are safe either way: the lease is exclusive, so whoever
loses gets `RunBusyError` and stops before any effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from durable_agent import _inspect as inspect
from durable_agent._submit import AT_REST, poll
from durable_agent._worker_retry import hand_over
from durable_agent.agent import Agent
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import DurableAgentError
from durable_agent.fsm import RunState

__all__ = ["DEFAULT_FLEET_WAIT", "Fleet", "NotResumableError"]

_log = logging.getLogger("durable_agent")

DEFAULT_FLEET_WAIT: Final = 3.0
"""Seconds a handed-over run waits for a worker before the page's agent takes it.

An idle worker looks for work at least every second (`Worker`'s longest idle
wait) and is woken at once where the store has wake-ups, so 3 s leaves room
for a loaded machine; if a worker is slower, both try and one wins the lease.
"""
_HAND_OVER_TTL: Final = 30.0


class NotResumableError(DurableAgentError):
    """The run cannot be resumed as it is (finished, waiting, or held by a live process)."""


class Fleet:
    """Hands runs to the workers and, failing a claim, to ``agent`` in this process."""

    def __init__(self, *, agent: Agent | None, fleet_wait: float, requested_by: str) -> None:
        self.agent = agent
        self.fleet_wait = fleet_wait
        self.requested_by = requested_by
        self._tasks: set[asyncio.Task[None]] = set()

    async def resume(self, backend: Backend, run_id: str) -> str:
        """Resume a failed or stranded run: record the ``resume``, hand it over; what happens."""
        header = await backend.get_run(run_id)
        state = header.state
        if state in (RunState.DONE, RunState.CANCELLED, RunState.WAITING):
            raise NotResumableError(f"run {run_id!r} is {state.value}: nothing to resume")
        if state is RunState.ERROR:
            owner = LeaseOwner.process()
            handed = await hand_over(
                backend, run_id, owner, _HAND_OVER_TTL, requested_by=self.requested_by
            )
            if not handed:
                now = await backend.get_run(run_id)
                raise NotResumableError(
                    f"run {run_id!r} is {now.state.value} and was not resumed: another process "
                    "resumed or holds it; reload the page"
                )
        else:
            lease = inspect.lease_data(header)
            if lease is not None and not lease["resumable_now"]:
                raise NotResumableError(
                    f"run {run_id!r} is {state.value} and {lease['text']}: it is running, "
                    "nothing to resume"
                )
        _log.info(
            "run %s: resume asked by %s from the inspector", run_id, self.requested_by,
            extra={"run_id": run_id},
        )  # fmt: skip
        return await self.hand_on(backend, run_id, header.agent_name)

    async def hand_on(self, backend: Backend, run_id: str, agent_name: str) -> str:
        """The run is claimable: let a worker take it, else this inspector's agent; say which."""
        agent = self.agent
        fleet = f"handed to the fleet: a worker serving agent {agent_name!r} continues it"
        if agent is None:
            return (
                f"{fleet} (no worker running? durable-agent runs resume {run_id} "
                "--agent module:attr)"
            )
        if agent.name != agent_name:
            return f"{fleet} (this inspector's agent is {agent.name!r})"
        generation = (await backend.get_run(run_id)).lease_generation
        drive = self._drive(backend, agent, run_id, generation)
        task = asyncio.get_running_loop().create_task(drive)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.fleet_wait <= 0:
            return f"the agent {agent.name!r} continues it in the inspector's process"
        return (
            f"{fleet}; if none claims it within {self.fleet_wait:g} s, the agent "
            f"{agent.name!r} continues it in the inspector's process"
        )

    async def _claimed(self, backend: Backend, run_id: str, generation: int) -> bool:
        """Whether someone took the run within ``fleet_wait`` (a claim bumps the generation)."""

        async def taken() -> bool | None:
            header = await backend.get_run(run_id)
            lease = inspect.lease_data(header)
            held = lease is not None and not lease["resumable_now"]
            moved = header.lease_generation > generation or header.state in AT_REST
            return True if held or moved else None

        return await poll(backend, taken, timeout=self.fleet_wait, longest_pause=0.2) is not None

    async def _drive(self, backend: Backend, agent: Agent, run_id: str, generation: int) -> None:
        try:
            if self.fleet_wait > 0 and await self._claimed(backend, run_id, generation):
                _log.info("run %s: a worker claimed it", run_id, extra={"run_id": run_id})
                return
            await agent.continue_run_async(run_id=run_id, return_output=True)
        except DurableAgentError as exc:  # recorded on the run (or a worker has it)
            _log.info("run %s stopped: %s", run_id, exc, extra={"run_id": run_id})
        except Exception:
            _log.exception("run %s: continuing it failed", run_id, extra={"run_id": run_id})

    async def close(self) -> None:
        """Stop the runs this process continues (each records its interruption)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
