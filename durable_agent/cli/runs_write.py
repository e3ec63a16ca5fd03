"""``durable-agent runs import``, ``runs delete`` and ``runs prune``: changing a store's runs.

``import`` stores a document ``runs export`` wrote (refusing to overwrite a
run), ``delete`` removes one run, ``prune`` removes finished runs not updated
for a while, and with ``--dry-run`` counts them the way `Backend.prune` would.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from durable_agent.backend import Backend
from durable_agent.cli import _store as store
from durable_agent.cli._app import choose, db_option, json_option, missing, opened, run_command
from durable_agent.cli._output import Printer
from durable_agent.cli.runs import STATES, parse_states, runs, when
from durable_agent.errors import RunExistsError
from durable_agent.fsm import RunState

__all__ = ["runs_delete", "runs_import", "runs_prune"]


def _age(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return store.parse_age(value)
    except store.CliError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# -- runs import / delete / prune ----------------------------------------------------------------


@runs.command("import")
@click.argument("file", metavar="FILE")
@click.option("--run-id", "new_id", metavar="ID", help="store it under this id instead (a copy)")
@json_option
@db_option
def runs_import(file: str, new_id: str | None, as_json: bool, db: str | None) -> int:
    """Store a run written by runs export.

    FILE is the exported JSON, or - for stdin. The lease is cleared; --run-id
    stores a copy under another id.
    """
    choice = choose(db)
    if file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(file).read_text(encoding="utf-8"), file
        except OSError as exc:
            raise store.CliError(f"cannot read {file}: {exc.strerror or exc}") from None

    async def body() -> int:
        run = store.import_document(text, source=source, run_id=new_id)
        async with opened(choice, create=True) as backend:
            try:
                await backend.create_run(run.header, run.events)
            except RunExistsError:
                raise store.CliError(
                    f"run {run.header.run_id!r} already exists in {choice.url}; delete it first "
                    "(runs delete) or import a copy under another id with --run-id NEW_ID"
                ) from None
        if as_json:
            Printer().json(
                {
                    "run_id": run.header.run_id,
                    "state": run.header.state.value,
                    "events": len(run.events),
                    "source": source,
                }
            )
            return 0
        Printer().line(
            f"imported run {run.header.run_id} ({run.header.state.value}, "
            f"{len(run.events)} events) into {choice.url}"
        )
        return 0

    return run_command(body())


@runs.command("delete")
@click.argument("run_id")
@json_option
@db_option
def runs_delete(run_id: str, as_json: bool, db: str | None) -> int:
    """Delete a run and its events."""
    choice = choose(db)

    async def body() -> int:
        async with opened(choice) as backend:
            if not await backend.delete_run(run_id):
                raise missing(run_id, choice)
        if as_json:
            Printer().json({"run_id": run_id, "deleted": True})
            return 0
        Printer().line(f"deleted run {run_id}")
        return 0

    return run_command(body())


@runs.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="AGE",
    callback=_age,
    help="last updated longer ago than this: 30d, 12h, 2w",
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=STATES,
    help="only runs in this state (repeatable; default DONE and CANCELLED)",
)
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@json_option
@db_option
def runs_prune(
    older_than: timedelta,
    states: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    db: str | None,
) -> int:
    """Delete finished runs not updated for a while.

    Deletes runs in the given states (default DONE and CANCELLED) last updated
    longer ago than --older-than. Runs a live process holds are kept.
    """
    choice = choose(db)
    cutoff = datetime.now(UTC) - older_than
    wanted = parse_states(states) or [RunState.DONE, RunState.CANCELLED]
    names = " or ".join(s.value for s in wanted)

    async def body() -> int:
        started = time.perf_counter()
        async with opened(choice) as backend:
            if dry_run:
                count = await _count_prunable(backend, wanted, cutoff)
            else:
                count = await backend.prune(older_than=cutoff, states=wanted)
        seconds = time.perf_counter() - started
        if as_json:
            Printer().json(
                {
                    "dry_run": dry_run,
                    "runs": count,
                    "states": [s.value for s in wanted],
                    "updated_before": cutoff.isoformat(),
                    "seconds": round(seconds, 3),
                }
            )
            return 0
        verb = "would delete" if dry_run else "deleted"
        Printer().line(
            f"{verb} {count} run{'' if count == 1 else 's'} in {names} last updated before "
            f"{when(cutoff)} UTC ({seconds:.2f} s)"
        )
        return 0

    return run_command(body())


async def _count_prunable(backend: Backend, states: list[RunState], cutoff: datetime) -> int:
    """What `Backend.prune` would delete: updated before ``cutoff`` and no live lease."""
    now = time.time()
    count = 0
    cursor: str | None = None
    while True:
        # updated_at >= created_at, so created_before=cutoff only narrows the scan.
        page = await backend.list_runs(
            states=states, created_before=cutoff, limit=500, cursor=cursor
        )
        count += sum(
            1
            for h in page.runs
            if h.updated_at < cutoff and (h.lease is None or h.lease.expires_at <= now)
        )
        cursor = page.next_cursor
        if cursor is None:
            return count
