"""``durable-agent runs resume``, ``approve``, ``reject`` and ``cancel``: deciding a run's fate.

``resume`` (and ``approve``/``reject`` with ``--agent``) continue the run with
its agent, imported by ``module:attribute``, in that agent's own store.
Without ``--agent`` a decision is only recorded (`durable_agent.cli._store`),
and ``cancel`` goes through `durable_agent.engine.cancel_run`, which leaves a
run a live process holds to that process.
"""

from __future__ import annotations

from typing import Final

import click

from durable_agent import _inspect as inspect
from durable_agent.agent import Agent
from durable_agent.backend import Backend
from durable_agent.cli import _store as store
from durable_agent.cli._app import (
    PROG,
    choose,
    db_option,
    json_option,
    missing,
    next_steps,
    opened,
    run_command,
)
from durable_agent.cli._output import Printer
from durable_agent.cli.runs import runs
from durable_agent.engine import cancel_run
from durable_agent.errors import RunNotFoundError
from durable_agent.fsm import RunState

__all__ = ["runs_approve", "runs_cancel", "runs_reject", "runs_resume"]


_BY_HELP: Final = "who decides, recorded with the decision (a name, an e-mail)"

_AGENT_HELP: Final = (
    "the Agent the run belongs to, as module:attribute (an Agent, or a function returning "
    "one); the run is continued in that agent's own store"
)


@runs.command("resume")
@click.argument("run_id")
@click.option("--agent", "agent_spec", required=True, metavar="MODULE:ATTR", help=_AGENT_HELP)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="stop (recorded, resumable) after this long",
)
@json_option
def runs_resume(run_id: str, agent_spec: str, timeout: float | None, as_json: bool) -> int:
    """Continue a run with its agent.

    After a failure (ERROR), after its process died, or after decisions. The
    run is continued in the agent's own store.
    """

    async def body() -> int:
        return await _continue(agent_spec, run_id, timeout=timeout, as_json=as_json)

    return run_command(body())


async def _continue(
    agent_spec: str,
    run_id: str,
    *,
    timeout: float | None = None,
    as_json: bool = False,
    agent: Agent | None = None,
) -> int:
    agent = agent or store.load_agent(agent_spec)
    try:
        output = await agent.continue_run_async(
            run_id=run_id, return_output=True, timeout=timeout
        )
    finally:
        await agent.db.close()
    out = Printer()
    if as_json:
        out.json(inspect.outcome_data(output))
        return 0
    out.line(f"run {output.run_id} is {output.state.value}")
    next_steps(out, output, output.run_id)
    return 0


@runs.command("approve")
@click.argument("run_id")
@click.argument("requirement_id")
@click.option(
    "--agent",
    "agent_spec",
    metavar="MODULE:ATTR",
    help="also continue the run with this agent (" + _AGENT_HELP + ")",
)
@click.option("--by", "decided_by", metavar="NAME", help=_BY_HELP)
@json_option
@db_option
def runs_approve(
    run_id: str,
    requirement_id: str,
    agent_spec: str | None,
    decided_by: str | None,
    as_json: bool,
    db: str | None,
) -> int:
    """Approve what a WAITING run waits for.

    Without --agent the decision is only recorded; runs resume (or any
    continue_run_async) goes on from there.
    """
    return run_command(
        _decide(run_id, requirement_id, True, agent_spec, db, decided_by, as_json=as_json)
    )


@runs.command("reject")
@click.argument("run_id")
@click.argument("requirement_id")
@click.option("--reason", help="told to the model as the call's error result")
@click.option(
    "--agent",
    "agent_spec",
    metavar="MODULE:ATTR",
    help="also continue the run with this agent (" + _AGENT_HELP + ")",
)
@click.option("--by", "decided_by", metavar="NAME", help=_BY_HELP)
@json_option
@db_option
def runs_reject(
    run_id: str,
    requirement_id: str,
    reason: str | None,
    agent_spec: str | None,
    decided_by: str | None,
    as_json: bool,
    db: str | None,
) -> int:
    """Reject what a WAITING run waits for.

    The model is told, with --reason. Without --agent the decision is only
    recorded.
    """
    return run_command(
        _decide(
            run_id, requirement_id, reason or False, agent_spec, db, decided_by, as_json=as_json
        )
    )


async def _decide(
    run_id: str,
    requirement_id: str,
    approval: bool | str,
    agent_spec: str | None,
    db: str | None,
    decided_by: str | None,
    *,
    as_json: bool,
) -> int:
    # The decision is recorded first (with who decided), then the agent continues
    # the run: the same two steps the inspector page takes.
    if agent_spec is not None:
        agent = store.load_agent(agent_spec)
        try:
            where = store.StoreChoice(f"the store of --agent {agent_spec}", "--agent")
            await _record(agent.db, where, run_id, requirement_id, approval, decided_by)
        except BaseException:
            await agent.db.close()
            raise
        return await _continue(agent_spec, run_id, as_json=as_json, agent=agent)
    choice = choose(db)
    async with opened(choice) as backend:
        state = await _record(backend, choice, run_id, requirement_id, approval, decided_by)
    verb = "approved" if approval is True else "rejected"
    out = Printer()
    if as_json:
        out.json(
            {
                "run_id": run_id,
                "requirement_id": requirement_id,
                "decision": "confirm" if approval is True else "reject",
                "decided_by": decided_by,
                "state": state.value,
            }
        )
        return 0
    out.line(f"{verb} {requirement_id}; run {run_id} is {state.value}")
    if state is not RunState.WAITING:
        out.note(
            f"nothing runs until it is continued: {PROG} runs resume {run_id} "
            "--agent module:attribute"
        )
    return 0


async def _record(
    backend: Backend,
    choice: store.StoreChoice,
    run_id: str,
    requirement_id: str,
    approval: bool | str,
    decided_by: str | None,
) -> RunState:
    try:
        header = await backend.get_run(run_id)
    except RunNotFoundError:
        raise missing(run_id, choice) from None
    return await store.record_decision(
        backend, header, {requirement_id: approval}, decided_by=decided_by
    )


@runs.command("cancel")
@click.argument("run_id")
@click.option(
    "--reason",
    default="cancelled from the command line",
    show_default=True,
    help="recorded with the cancellation",
)
@json_option
@db_option
def runs_cancel(run_id: str, reason: str, as_json: bool, db: str | None) -> int:
    """Cancel a run.

    At once if no live process holds it; otherwise the process running it
    stops at its next transition.
    """
    choice = choose(db)

    async def body() -> int:
        async with opened(choice) as backend:
            try:
                state = await cancel_run(backend, run_id, reason=reason)
            except RunNotFoundError:
                raise missing(run_id, choice) from None
        out = Printer()
        if as_json:
            out.json(
                {
                    "run_id": run_id,
                    "state": state.value,
                    "cancelled": state is RunState.CANCELLED,
                    "requested": state is not RunState.CANCELLED,
                    "reason": reason,
                }
            )
        elif state is RunState.CANCELLED:
            out.line(f"run {run_id} is CANCELLED")
        else:
            out.line(
                f"cancellation of run {run_id} requested; it is {state.value} and the process "
                "running it stops at its next transition"
            )
        return 0

    return run_command(body())
