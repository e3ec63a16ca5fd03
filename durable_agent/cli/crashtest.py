"""``durable-agent crashtest``: kill your agent after each durable write and check the resume.

The test itself is `durable_agent.testing.crashtest`; this command parses its
options, prints the report (or ``--json``) and exits 1 when the report fails:
an answer that did not match, or a tool flagged for ignoring its key.
"""

from __future__ import annotations

from pathlib import Path

import click

from durable_agent.cli._app import CONTEXT, cli, current_state
from durable_agent.cli._output import Printer

__all__ = ["crashtest"]


@cli.command("crashtest", context_settings=CONTEXT)
@click.argument("agent_spec", metavar="MODULE:ATTR")
@click.argument("task")
@click.option(
    "--kill-points",
    default="all",
    show_default=True,
    metavar="all|N,...",
    help="the durable writes to kill after: all of them, or numbers such as 1,3",
)
@click.option(
    "--pure",
    multiple=True,
    metavar="TOOL",
    help="a tool without outside effects, never flagged (repeatable)",
)
@click.option(
    "--allow-real-model",
    is_flag=True,
    help="let a provider model call its real API at every kill point (costs money)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="the longest one child process may take",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="keep the scratch stores and tool ledgers in DIR",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def crashtest(
    agent_spec: str,
    task: str,
    kill_points: str,
    pure: tuple[str, ...],
    allow_real_model: bool,
    timeout: float,
    keep: Path | None,
    as_json: bool,
) -> int:
    """Kill an agent after each durable write, resume it, and report what ran again.

    MODULE:ATTR names the Agent (or a function returning one), also as
    path/to/file.py:ATTR. Each kill point runs TASK in a new process that is
    SIGKILLed right after that write, and continues it in another, on a
    scratch store (never the agent's own). Exits 1 when an answer differs
    from the clean run's or a tool that may run again never reads
    ctx.idempotency_key.
    """
    # Imported here: the test kit is not needed by the other commands.
    from durable_agent.testing.crashtest import crashtest as run_crashtest

    current_state().ran = True
    report = run_crashtest(
        agent_spec,
        task,
        kill_points=kill_points,
        pure=pure,
        allow_real_model=allow_real_model,
        timeout=timeout,
        keep=keep,
    )
    out = Printer()
    if as_json:
        out.json(report.to_json())
    else:
        for line in report.text().splitlines():
            out.line(line)
    return 0 if report.ok else 1
