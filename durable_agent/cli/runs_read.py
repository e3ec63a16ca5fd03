"""``durable-agent runs list``, ``runs show`` and ``runs export``: reading a store's runs.

None of them writes to the store. A run the store cannot read is listed (as
corrupt or newer), never hidden; ``show`` prints the timeline that
`durable_agent.cli._timeline` builds, and ``export`` writes the document that
``runs import`` (`durable_agent.cli.runs_write`) reads back.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from durable_agent._fork import fork_origin
from durable_agent._lease import process_alive
from durable_agent.backend import LeaseOwner, UnreadableRun
from durable_agent.cli import _store as store
from durable_agent.cli._app import (
    choose,
    db_option,
    json_option,
    load,
    next_steps,
    opened,
    run_command,
)
from durable_agent.cli._output import Column, Printer
from durable_agent.cli._timeline import error_text, timeline
from durable_agent.cli.runs import STATES, parse_states, runs, when
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader, StoredRun, encode_header
from durable_agent.run import RunContext, RunOutput

__all__ = ["runs_export", "runs_list", "runs_show"]


def _header_json(header: RunHeader) -> Any:
    return json.loads(encode_header(header))


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    try:
        return store.parse_since(value) if value is not None else None
    except store.CliError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# -- runs list ---------------------------------------------------------------------------------


@runs.command("list")
@click.option(
    "--state", "states", multiple=True, type=STATES, help="only runs in this state (repeatable)"
)
@click.option("--session", metavar="ID", help="only runs of this session")
@click.option("--user", metavar="ID", help="only runs of this user")
@click.option(
    "--since",
    metavar="AGE|DATE",
    callback=_since,
    help="only runs created since: 7d, 12h, 2025-05-02",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="runs per page"
)
@click.option("--cursor", metavar="CURSOR", help="the page after the one that printed this cursor")
@click.option("--all", "every", is_flag=True, help="every matching run, page after page")
@json_option
@db_option
def runs_list(
    states: tuple[str, ...],
    session: str | None,
    user: str | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
    every: bool,
    as_json: bool,
    db: str | None,
) -> int:
    """List runs, newest first, a page at a time."""
    choice = choose(db)

    async def body() -> int:
        out = Printer()
        found: list[RunHeader] = []
        unreadable: list[UnreadableRun] = []
        next_cursor = cursor
        async with opened(choice) as backend:
            while True:
                page = await backend.list_runs(
                    session_id=session,
                    user_id=user,
                    states=parse_states(states) or None,
                    created_after=since,
                    limit=limit,
                    cursor=next_cursor,
                )
                found.extend(page.runs)
                unreadable.extend(page.unreadable)  # a run it cannot read is shown, not hidden
                next_cursor = page.next_cursor
                if not every or next_cursor is None:
                    break
            foreign = await store.foreign_entries(backend)
        if foreign:
            out.note(store.foreign_note(choice, foreign))
        if as_json:
            out.json(
                {
                    "runs": [_header_json(h) for h in found],
                    "unreadable": [store.unreadable_json(u) for u in unreadable],
                    "next_cursor": next_cursor,
                }
            )
            return 0
        if not found and not unreadable:
            out.note(f"no runs match in {choice.url}")
            return 0
        columns = [
            Column("RUN ID", "bold"),
            Column("STATE", "cyan"),
            Column("AGENT"),
            Column("SESSION"),
            Column("USER"),
            Column("EVENTS", right=True),
            Column("CREATED (UTC)"),
            Column("UPDATED (UTC)"),
        ]
        out.table(
            columns,
            [
                [
                    h.run_id,
                    h.state.value,
                    h.agent_name,
                    h.session_id or "-",
                    h.user_id or "-",
                    str(h.seq),
                    when(h.created_at),
                    when(h.updated_at),
                ]
                for h in found
            ]
            + [store.unreadable_row(u, len(columns)) for u in unreadable],
        )
        for note in store.unreadable_notes(unreadable):
            out.note(note)
        if next_cursor is not None:
            out.note(f"more runs: add --cursor {next_cursor} (or --all)")
        return 0

    return run_command(body())


# -- runs show -----------------------------------------------------------------------------------


@runs.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="do not abridge arguments, results and answers")
@click.option("--follow", is_flag=True, help="then follow the run live (see 'runs follow')")
@json_option
@db_option
def runs_show(run_id: str, full: bool, follow: bool, as_json: bool, db: str | None) -> int:
    """Show a run and the timeline of its events."""
    choice = choose(db)

    shown: list[int] = []  # the seq shown, where --follow goes on

    async def body() -> int:
        if not follow:
            return await show()
        from durable_agent.cli.runs_follow import follow_run

        if as_json:  # one JSON object per line, from the first event
            return await follow_run(choice, run_id, full=full, as_json=True)
        await show()
        return await follow_run(choice, run_id, after_seq=shown[-1], full=full)

    async def show() -> int:
        async with opened(choice) as backend:
            stored = await load(backend, choice, run_id)
        shown.append(stored.header.seq)
        rows = timeline(stored, full=full)
        output = RunOutput.from_context(_context(stored))
        origin = fork_origin(stored.events)
        out = Printer()
        if as_json:
            out.json(
                {
                    "header": _header_json(stored.header),
                    "forked_from": origin.model_dump() if origin is not None else None,
                    "timeline": [
                        {
                            "seq": r.seq,
                            "at": r.at.isoformat(),
                            "kind": r.kind,
                            "trigger": r.trigger,
                            "from": r.source.value,
                            "to": r.state.value,
                            "detail": r.detail,
                        }
                        for r in rows
                    ],
                }
            )
            return 0
        header = stored.header
        usage = output.usage
        fields = [
            ("run", header.run_id),
            ("state", header.state.value),
            ("agent", header.agent_name),
            ("session", header.session_id or "-"),
            ("user", header.user_id or "-"),
            ("created", f"{when(header.created_at)} UTC"),
            ("updated", f"{when(header.updated_at)} UTC"),
            (
                "usage",
                f"{_plural(usage.requests, 'model request')}, {usage.input_tokens} input + "
                f"{usage.output_tokens} output tokens",
            ),
            ("lease", _lease_text(header)),
        ]
        if origin is not None:
            fields.insert(1, ("forked", f"from run {origin.run_id} at seq {origin.seq}"))
        if header.cancel_requested and header.state is not RunState.CANCELLED:
            fields.append(("cancel", f"requested: {header.cancel_requested}"))
        if output.error is not None:
            fields.append(("error", error_text(output.error)))
        out.fields(fields)
        out.line()
        out.table(
            [
                Column("SEQ", right=True),
                Column("TIME (UTC)"),
                Column("TRANSITION", "cyan"),
                Column("EVENT", "bold"),
                Column("DETAIL"),
            ],
            [
                [
                    str(r.seq),
                    r.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3],
                    r.transition,
                    r.kind,
                    r.detail,
                ]
                for r in rows
            ],
        )
        next_steps(out, output, header.run_id)
        return 0

    return run_command(body())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _context(stored: StoredRun) -> RunContext:
    return RunContext.from_stored(stored)


def _lease_text(header: RunHeader) -> str:
    lease = header.lease
    if lease is None:
        return "none (no process is running it)"
    left = lease.expires_at - time.time()
    if left <= 0:
        return f"expired, was held by {lease.owner}"
    text = f"held by {lease.owner} for {left:.0f} s more"
    if lease.host == LeaseOwner.current().host and not process_alive(lease.pid):
        text += f" (process {lease.pid} is gone: the run can be resumed now)"
    return text


# -- runs export -------------------------------------------------------------------------------


@runs.command("export")
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write to FILE instead of stdout",
)
@db_option
def runs_export(run_id: str, output: Path | None, db: str | None) -> int:
    """Write a run as JSON (for runs import).

    The header and every event, exactly as stored.
    """
    choice = choose(db)

    async def body() -> StoredRun:
        async with opened(choice) as backend:
            return await load(backend, choice, run_id)

    stored = run_command(body())
    text = json.dumps(store.export_document(stored), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        Printer().note(f"exported run {run_id} ({len(stored.events)} events) to {output}")
    return 0
