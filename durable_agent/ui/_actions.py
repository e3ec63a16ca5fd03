"""What the page's buttons do: the same decide / cancel / resume calls the Python API has.

A decision is recorded with `durable_agent.engine.decide_run` (who decided is
stored on the decision event); a cancellation goes through
`durable_agent.engine.cancel_run`. Continuing a run (after the last decision,
or resuming a failed one) needs the agent's tools, so it only happens when the
inspector was given the agent (``--agent module:attr``): it then runs in the
background of the server, and the page follows it from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping

from durable_agent.agent import Agent
from durable_agent.backend import Backend
from durable_agent.engine import cancel_run, decide_run
from durable_agent.errors import DecisionError, DurableAgentError
from durable_agent.fsm import RunState
from durable_agent.records import JSONValue

__all__ = ["ActionError", "Actions"]

_log = logging.getLogger("durable_agent")


class ActionError(DurableAgentError):
    """An action the page asked for cannot be done; the message says why."""


def _value(text: str) -> JSONValue:
    """A typed value as JSON when it parses (42, true, {"a": 1}), else the text itself."""
    try:
        value: JSONValue = json.loads(text)
    except ValueError:
        return text
    return value


class Actions:
    """Changes runs for the page; ``agent`` (optional) continues them."""

    def __init__(self, *, agent: Agent | None, decided_by: str) -> None:
        self.agent = agent
        self.decided_by = decided_by
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def can_continue(self) -> bool:
        """Whether runs can be continued from the page (an agent was given)."""
        return self.agent is not None

    async def decide(self, backend: Backend, run_id: str, form: Mapping[str, str]) -> str:
        """Record one decision from a requirement's form; continue the run when it may go on."""
        rid = form.get("requirement", "")
        action = form.get("action", "")
        reason = form.get("reason", "").strip()
        approvals: dict[str, bool | str] | None = None
        results: dict[str, JSONValue] | None = None
        inputs: dict[str, dict[str, JSONValue]] | None = None
        match action:
            case "confirm":
                approvals = {rid: True}
            case "reject":
                approvals = {rid: reason or False}
            case "result":
                results = {rid: _value(form.get("value", ""))}
            case "input":
                fields = {
                    k.removeprefix("field."): _value(v)
                    for k, v in form.items()
                    if k.startswith("field.")
                }
                inputs = {rid: fields}
            case _:
                raise ActionError(f"unknown decision {action!r}")
        try:
            state = await decide_run(
                backend,
                run_id,
                approvals=approvals,
                results=results,
                inputs=inputs,
                decided_by=self.decided_by,
            )
        except DecisionError as exc:
            raise ActionError(str(exc)) from None
        done = f"{rid}: {'approved' if action == 'confirm' else action} by {self.decided_by}"
        if state is RunState.WAITING:
            return f"{done}; the run waits for the rest"
        return f"{done}; {self._continue(run_id)}"

    async def cancel(self, backend: Backend, run_id: str, reason: str) -> str:
        """Cancel the run (the process running it, if any, stops at its next transition)."""
        reason = reason.strip() or f"cancelled from the inspector by {self.decided_by}"
        state = await cancel_run(backend, run_id, reason=reason)
        if state is RunState.CANCELLED:
            return "the run is CANCELLED"
        return f"cancellation requested; the run is {state.value} until its process stops"

    async def resume(self, backend: Backend, run_id: str) -> str:
        """Continue a failed or stranded run with the agent."""
        header = await backend.get_run(run_id)
        if header.state in (RunState.DONE, RunState.CANCELLED, RunState.WAITING):
            raise ActionError(f"run {run_id!r} is {header.state.value}: nothing to resume")
        return self._continue(run_id)

    def _continue(self, run_id: str) -> str:
        agent = self.agent
        if agent is None:
            return (
                "nothing runs it from here: start the inspector with --agent module:attr, or "
                f"run: durable-agent runs resume {run_id} --agent module:attr"
            )
        task = asyncio.get_running_loop().create_task(self._drive(agent, run_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return f"the agent {agent.name!r} continues it"

    async def _drive(self, agent: Agent, run_id: str) -> None:
        try:
            await agent.continue_run_async(run_id=run_id, return_output=True)
        except DurableAgentError as exc:  # recorded on the run; the page shows it
            _log.info("run %s stopped: %s", run_id, exc, extra={"run_id": run_id})
        except Exception:
            _log.exception("run %s: continuing it failed", run_id, extra={"run_id": run_id})

    async def close(self) -> None:
        """Stop the runs this server continues (each records its interruption)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
