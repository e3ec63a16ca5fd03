"""The ``durable-agent runs`` group, and what its commands share.

Its commands live beside it, one module per kind of work:
`durable_agent.cli.runs_read` (list, show, export),
`durable_agent.cli.runs_write` (import, delete, prune) and
`durable_agent.cli.decide` (resume, approve, reject, cancel) and
`durable_agent.cli.fork` (fork), each imported when one of its commands runs
(`RUN_COMMANDS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import click

from durable_agent.cli._app import CONTEXT, Group, LazyCommand, cli
from durable_agent.fsm import RunState

__all__ = ["RUN_COMMANDS", "STATES", "parse_states", "runs", "when"]

_READ: Final = "durable_agent.cli.runs_read"
_WRITE: Final = "durable_agent.cli.runs_write"
_DECIDE: Final = "durable_agent.cli.decide"

RUN_COMMANDS: Final = {
    "list": LazyCommand(_READ, "List runs, newest first, a page at a time."),
    "show": LazyCommand(_READ, "Show a run and the timeline of its events."),
    "export": LazyCommand(_READ, "Write a run as JSON (for runs import)."),
    "follow": LazyCommand(
        "durable_agent.cli.runs_follow",
        "Follow a run live: its events as they are stored, until it comes to rest.",
    ),
    "import": LazyCommand(_WRITE, "Store a run written by runs export."),
    "delete": LazyCommand(_WRITE, "Delete a run and its events."),
    "prune": LazyCommand(_WRITE, "Delete finished runs not updated for a while."),
    "resume": LazyCommand(_DECIDE, "Continue a run with its agent."),
    "approve": LazyCommand(_DECIDE, "Approve what a WAITING run waits for."),
    "reject": LazyCommand(_DECIDE, "Reject what a WAITING run waits for."),
    "cancel": LazyCommand(_DECIDE, "Cancel a run."),
    "fork": LazyCommand(
        "durable_agent.cli.fork",
        "Fork a run: a new run holding its events up to --at, the source untouched.",
    ),
}
"""The ``runs`` group's commands, in the order help lists them (see `Group`)."""


@cli.group(cls=Group, context_settings=CONTEXT, lazy=RUN_COMMANDS)
def runs() -> None:
    """Inspect, export, clean up, decide, resume and cancel runs."""


STATES: Final = click.Choice([s.value for s in RunState], case_sensitive=False)
"""The ``--state`` option's type: a state's name, in any case."""


def parse_states(values: Sequence[str]) -> list[RunState]:
    """The states ``--state`` named (an empty list when it was not given)."""
    return [RunState(v.upper()) for v in values]


def when(moment: datetime) -> str:
    """A moment as the commands print it: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
