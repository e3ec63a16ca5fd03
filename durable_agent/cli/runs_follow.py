"""``durable-agent runs follow RUN_ID``: a run's timeline, live, until it comes to rest.

Each stored event is printed as a row the moment it lands (the rows of ``runs
show``); where the store relays them (Redis, PostgreSQL), the text of the model call in
flight is printed as it streams, and a line says when streamed text was
discarded (an attempt cut mid-stream, a call asked again after a crash). With
``--json``, one JSON object per line: each event's ``as_json()``
(`durable_agent.streaming`). ``--after-seq N`` starts after event N, as a
client that reconnects does. ``runs show --follow`` prints the run, then
follows it.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC
from typing import IO

import click

from durable_agent._follow import follow
from durable_agent._timeline import describer, error_text
from durable_agent.cli import _store as store
from durable_agent.cli._app import choose, db_option, json_option, missing, opened, run_command
from durable_agent.cli.runs import runs
from durable_agent.errors import RunNotFoundError
from durable_agent.streaming import (
    Finished,
    Paused,
    StoredEvent,
    StreamEvent,
    TextDelta,
    TextDiscarded,
)

__all__ = ["follow_run", "runs_follow"]


@runs.command("follow")
@click.argument("run_id")
@click.option("--after-seq", type=click.IntRange(min=0), default=0, show_default=True,
              help="start after this event (a reconnecting client passes the last seq it saw)")
@click.option("--full", is_flag=True, help="do not abridge arguments, results and answers")
@json_option
@db_option
def runs_follow(run_id: str, after_seq: int, full: bool, as_json: bool, db: str | None) -> int:
    """Follow a run live: its events as they are stored, until it comes to rest."""
    choice = choose(db)
    return run_command(follow_run(choice, run_id, after_seq=after_seq, full=full, as_json=as_json))


async def follow_run(
    choice: store.StoreChoice,
    run_id: str,
    *,
    after_seq: int = 0,
    full: bool = False,
    as_json: bool = False,
    stdout: IO[str] | None = None,
) -> int:
    """Print ``run_id``'s events after ``after_seq`` as they land; 0 once it is at rest."""
    out = stdout if stdout is not None else sys.stdout
    view = _JsonLines(out) if as_json else _Live(out, full=full)
    async with opened(choice) as backend:
        try:
            async for event in follow(backend, run_id, after_seq=after_seq):
                view.show(event)
        except RunNotFoundError:
            raise missing(run_id, choice) from None
    return 0


class _JsonLines:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def show(self, event: StreamEvent) -> None:
        self.out.write(json.dumps(event.as_json(), ensure_ascii=False) + "\n")
        self.out.flush()


class _Live:
    """Rows for stored events; streamed text inline, ended by a newline before the next row."""

    def __init__(self, out: IO[str], *, full: bool) -> None:
        self.out = out
        self.describe = describer(full=full)
        self.in_text = False

    def _end_text(self) -> None:
        if self.in_text:
            self.out.write("\n")
            self.in_text = False

    def show(self, event: StreamEvent) -> None:
        match event:
            case TextDelta():
                if not self.in_text:
                    self.out.write("       … ")
                    self.in_text = True
                self.out.write(event.text)
            case TextDiscarded():
                self._end_text()
                self.out.write(f"       (streamed text discarded: {event.reason})\n")
            case StoredEvent():
                self._end_text()
                record = event.record
                moved = (
                    f"{event.previous.value} → {event.state.value}" if event.changed_state else ""
                )
                at = record.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
                self.out.write(
                    f"{event.seq:>5}  {at}  {moved:<22}  {record.kind:<20}  "
                    f"{self.describe(record)}\n"
                )
            case Finished():
                self._end_text()
                output = event.output
                said = f": {output.output}" if output.output is not None else ""
                if output.error is not None:
                    said = f": {error_text(output.error)}"
                self.out.write(f"run {output.run_id} is {output.state.value}{said}\n")
            case Paused():
                self._end_text()
                waiting = ", ".join(f"{r.id} ({r.kind} {r.tool_name})" for r in event.requirements)
                self.out.write(f"run {event.output.run_id} is WAITING for: {waiting}\n")
            case _:
                pass
        self.out.flush()
