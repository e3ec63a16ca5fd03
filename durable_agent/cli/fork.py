"""``durable-agent runs fork``: a new run from a prefix of another's log.

Without ``--agent`` the fork is only stored (in the store ``--db`` names) and
``runs resume`` continues it; with ``--agent`` it is stored in that agent's
store and continued at once, as `durable_agent.Agent.fork_run_async` does.
"""

from __future__ import annotations

import click

from durable_agent._fork import create_fork
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
from durable_agent.errors import RunNotFoundError
from durable_agent.fsm import RunState

__all__ = ["runs_fork"]


@runs.command("fork")
@click.argument("run_id")
@click.option("--at", "at_seq", required=True, type=int, metavar="SEQ",
              help="the last event of RUN_ID the fork keeps (runs show lists the seqs)")
@click.option("--new-id", "new_id", metavar="ID", help="the fork's run id (default: random)")
@click.option(
    "--agent",
    "agent_spec",
    metavar="MODULE:ATTR",
    help="continue the fork at once with this Agent (module:attribute), in its own store",
)
@json_option
@db_option
def runs_fork(
    run_id: str,
    at_seq: int,
    new_id: str | None,
    agent_spec: str | None,
    as_json: bool,
    db: str | None,
) -> int:
    """Fork a run: a new run holding its events up to --at, the source untouched.

    What those events recorded (model answers, tool results) is reused, never
    redone. A tool call in flight at --at runs again under the fork's own
    idempotency keys (or waits, for an idempotent=False tool).
    """

    async def body() -> int:
        out = Printer()
        if agent_spec is not None:
            agent = store.load_agent(agent_spec)
            try:
                output = await agent.fork_run_async(run_id, at_seq=at_seq, new_run_id=new_id)
            finally:
                await agent.db.close()
            fork_id, state = output.run_id, output.state
        else:
            choice = choose(db)
            async with opened(choice) as backend:
                try:
                    header = await create_fork(backend, run_id, at_seq=at_seq, new_run_id=new_id)
                except RunNotFoundError:
                    raise missing(run_id, choice) from None
            fork_id, state, output = header.run_id, header.state, None
        if as_json:
            out.json(
                {
                    "run_id": fork_id,
                    "forked_from": {"run_id": run_id, "seq": at_seq},
                    "state": state.value,
                    "output": output.output if output is not None else None,
                }
            )
            return 0
        out.line(f"forked run {run_id} at seq {at_seq} into {fork_id}; it is {state.value}")
        if output is not None:
            next_steps(out, output, fork_id)
        elif state not in (RunState.DONE, RunState.CANCELLED):
            out.note(f"continue it with: {PROG} runs resume {fork_id} --agent module:attribute")
        return 0

    return run_command(body())
