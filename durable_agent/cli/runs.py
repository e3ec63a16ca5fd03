"""The ``durable-agent runs`` group, and what its commands share.

Its commands live beside it, one module per kind of work:
`durable_agent.cli.runs_read` (list, show, export),
`durable_agent.cli.runs_write` (import, delete, prune) and
`durable_agent.cli.decide` (resume, approve, reject, cancel).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import click

from durable_agent.cli._app import CONTEXT, Group, cli
from durable_agent.fsm import RunState

__all__ = ["STATES", "parse_states", "runs", "when"]


@cli.group(cls=Group, context_settings=CONTEXT)
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
