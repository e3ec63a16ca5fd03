"""What the page's buttons do: the same decide / cancel / resume calls the Python API has.

A decision is recorded with `durable_agent.engine.decide_run` (who decided is
stored on the decision event); a cancellation goes through
`durable_agent.engine.cancel_run`. Continuing a run (after the last decision,
or resuming a failed one) is `durable_agent.ui._fleet.Fleet`'s: the run is
handed to the workers, and continued in the server's background by the agent
given with ``--agent module:attr`` when no worker claims it. The page follows
it from the store either way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from durable_agent.agent import Agent
from durable_agent.backend import Backend
from durable_agent.engine import cancel_run, decide_run
from durable_agent.errors import DecisionError, DurableAgentError
from durable_agent.fsm import RunState
from durable_agent.records import JSONValue
from durable_agent.ui._fleet import Fleet, NotResumableError

__all__ = ["ActionError", "Actions"]


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
    """Changes runs for the page; the fleet, else ``agent`` (optional), continues them."""

    def __init__(self, *, agent: Agent | None, decided_by: str, fleet_wait: float) -> None:
        self.agent = agent
        self.decided_by = decided_by
        self.fleet = Fleet(agent=agent, fleet_wait=fleet_wait, requested_by=decided_by)

    @property
    def can_continue(self) -> bool:
        """Whether this process can continue runs itself (an agent was given)."""
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
        header = await backend.get_run(run_id)
        return f"{done}; {await self.fleet.hand_on(backend, run_id, header.agent_name)}"

    async def cancel(self, backend: Backend, run_id: str, reason: str) -> str:
        """Cancel the run (the process running it, if any, stops at its next transition)."""
        reason = reason.strip() or f"cancelled from the inspector by {self.decided_by}"
        state = await cancel_run(backend, run_id, reason=reason)
        if state is RunState.CANCELLED:
            return "the run is CANCELLED"
        return f"cancellation requested; the run is {state.value} until its process stops"

    async def resume(self, backend: Backend, run_id: str) -> str:
        """Resume a failed or stranded run through the fleet (else the agent given)."""
        try:
            return await self.fleet.resume(backend, run_id)
        except NotResumableError as exc:
            raise ActionError(str(exc)) from None

    async def close(self) -> None:
        """Stop the runs this server continues (each records its interruption)."""
        await self.fleet.close()
