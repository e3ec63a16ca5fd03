"""The ``durable-agent`` command: inspect, clean up, decide, resume and draw runs.

Its commands:

    durable-agent runs list [--state WAITING] [--session ID] [--user ID] [--since 7d] [--json]
    durable-agent runs show RUN_ID            # the timeline of its events
    durable-agent runs export RUN_ID -o run.json
    durable-agent runs import run.json
    durable-agent runs delete RUN_ID
    durable-agent runs prune --older-than 30d [--state DONE] [--dry-run]
    durable-agent runs resume RUN_ID --agent myapp.agents:support
    durable-agent runs approve RUN_ID REQUIREMENT_ID [--agent myapp.agents:support]
    durable-agent runs reject RUN_ID REQUIREMENT_ID [--reason TEXT]
    durable-agent runs cancel RUN_ID [--reason TEXT]
    durable-agent diagram [--run RUN_ID] [--format mermaid|dot|svg|png] [-o FILE]
    durable-agent demo

The store is ``--db URL`` (on the command or before it), else the
``DURABLE_AGENT_DB`` environment variable, else ``sqlite:///durable.db``.
Errors are one line on stderr with exit status 1 (2 for bad usage); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import click

from durable_agent import _cli_store as store
from durable_agent import _demo
from durable_agent._cli_output import Column, Printer
from durable_agent._cli_timeline import error_text, timeline
from durable_agent._lease import process_alive
from durable_agent.backend import Backend, LeaseOwner, UnreadableRun
from durable_agent.diagram import FORMATS, DiagramFormat, machine_diagram, run_diagram
from durable_agent.engine import cancel_run
from durable_agent.errors import DurableAgentError, RunExistsError, RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader, StoredRun, encode_header
from durable_agent.run import RunContext, RunOutput

__all__ = ["PROG", "cli", "main"]

PROG: Final = "durable-agent"
_P = ParamSpec("_P")
_T = TypeVar("_T")


# -- shared state, the group class, the --db option ------------------------------------------


@dataclass
class _State:
    """What the root options set, shared with every command through ``ctx.obj``."""

    db: str | None = None
    debug: bool = False
    ran: bool = False
    """Set when a command ran (not just --help or --version)."""


class _Group(click.Group):
    """Commands listed in the order they are defined; usage errors kept to one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            raise click.UsageError("the following arguments are required: COMMAND", ctx)
        return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0]
        if self.get_command(ctx, name) is None and not name.startswith("-"):
            choices = ", ".join(repr(c) for c in self.list_commands(ctx))
            raise click.UsageError(f"invalid choice: {name!r} (choose from {choices})", ctx)
        return super().resolve_command(ctx, args)


_CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_DB_HELP: Final = (
    f"store URL, e.g. sqlite:///runs.db, redis://localhost:6379/0, file:///var/runs "
    f"(default: ${store.DB_ENV}, else {store.DEFAULT_DB})"
)


def _db_option(function: Callable[_P, Any]) -> Callable[_P, Any]:
    return click.option("--db", "db", metavar="URL", help=_DB_HELP)(function)


def _json_option(function: Callable[_P, Any]) -> Callable[_P, Any]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(function)


def _state() -> _State:
    obj = click.get_current_context().find_object(_State)
    return obj if obj is not None else _State()


def _choice(db: str | None) -> store.StoreChoice:
    return store.choose_store(db or _state().db)


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    _state().ran = True
    return asyncio.run(coroutine)


@contextlib.asynccontextmanager
async def _opened(choice: store.StoreChoice, *, create: bool = False) -> AsyncIterator[Backend]:
    backend = store.open_store(choice, create=create)
    async with backend:
        yield backend


def _missing(run_id: str, choice: store.StoreChoice) -> store.CliError:
    return store.CliError(
        f"run {run_id!r} not found in {choice.url} (from {choice.origin}); list the runs with: "
        f"{PROG} runs list"
    )


async def _load(backend: Backend, choice: store.StoreChoice, run_id: str) -> StoredRun:
    try:
        return await backend.load_run(run_id)
    except RunNotFoundError:
        raise _missing(run_id, choice) from None


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _header_json(header: RunHeader) -> Any:
    return json.loads(encode_header(header))


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    try:
        return store.parse_since(value) if value is not None else None
    except store.CliError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _age(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return store.parse_age(value)
    except store.CliError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


_STATES: Final = click.Choice([s.value for s in RunState], case_sensitive=False)


def _states(values: Sequence[str]) -> list[RunState]:
    return [RunState(v.upper()) for v in values]


# -- the root group ------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings=_CONTEXT)
@click.option("--db", "db", metavar="URL", help=_DB_HELP)
@click.option("--debug", is_flag=True, help="show the traceback when a command fails")
@click.version_option(package_name="durable-agent", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, db: str | None, debug: bool) -> None:
    """LLM agent runs that survive crashes, kills, timeouts and API errors.

    Inspect the runs in a store, clean them up, decide what they wait for,
    resume them, and draw the state machine or the path one run took.
    """
    state = ctx.ensure_object(_State)
    state.db = db
    state.debug = debug


@cli.group(cls=_Group, context_settings=_CONTEXT)
def runs() -> None:
    """Inspect, export, clean up, decide, resume and cancel runs."""


# -- runs list ---------------------------------------------------------------------------------


@runs.command("list")
@click.option(
    "--state", "states", multiple=True, type=_STATES, help="only runs in this state (repeatable)"
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
@_json_option
@_db_option
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
    choice = _choice(db)

    async def body() -> int:
        out = Printer()
        found: list[RunHeader] = []
        unreadable: list[UnreadableRun] = []
        next_cursor = cursor
        async with _opened(choice) as backend:
            while True:
                page = await backend.list_runs(
                    session_id=session,
                    user_id=user,
                    states=_states(states) or None,
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
                    _when(h.created_at),
                    _when(h.updated_at),
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

    return _run(body())


# -- runs show -----------------------------------------------------------------------------------


@runs.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="do not abridge arguments, results and answers")
@_json_option
@_db_option
def runs_show(run_id: str, full: bool, as_json: bool, db: str | None) -> int:
    """Show a run and the timeline of its events."""
    choice = _choice(db)

    async def body() -> int:
        async with _opened(choice) as backend:
            stored = await _load(backend, choice, run_id)
        rows = timeline(stored, full=full)
        output = RunOutput.from_context(_context(stored))
        out = Printer()
        if as_json:
            out.json(
                {
                    "header": _header_json(stored.header),
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
            ("created", f"{_when(header.created_at)} UTC"),
            ("updated", f"{_when(header.updated_at)} UTC"),
            (
                "usage",
                f"{_plural(usage.requests, 'model request')}, {usage.input_tokens} input + "
                f"{usage.output_tokens} output tokens",
            ),
            ("lease", _lease_text(header)),
        ]
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
        _next_steps(out, output, header.run_id)
        return 0

    return _run(body())


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


def _next_steps(out: Printer, output: RunOutput, run_id: str) -> None:
    match output.state:
        case RunState.WAITING:
            out.line()
            for r in output.requirements:
                out.line(f"waiting for {r.id} ({r.kind}): {r.tool_name}({_args(r.arguments)})")
            first = output.requirements[0].id if output.requirements else "REQUIREMENT_ID"
            out.note(
                f"decide with: {PROG} runs approve {run_id} {first}   "
                f"(or: runs reject {run_id} {first} --reason TEXT)"
            )
        case RunState.ERROR | RunState.PENDING | RunState.MODEL_CALL | RunState.TOOL_EXEC:
            out.note(f"continue with: {PROG} runs resume {run_id} --agent module:attribute")
        case RunState.DONE:
            out.line()
            out.line(f"answer: {output.output}")
        case RunState.CANCELLED:
            pass


def _args(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items())


# -- runs export / import / delete / prune -----------------------------------------------------


@runs.command("export")
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write to FILE instead of stdout",
)
@_db_option
def runs_export(run_id: str, output: Path | None, db: str | None) -> int:
    """Write a run as JSON (for runs import).

    The header and every event, exactly as stored.
    """
    choice = _choice(db)

    async def body() -> StoredRun:
        async with _opened(choice) as backend:
            return await _load(backend, choice, run_id)

    stored = _run(body())
    text = json.dumps(store.export_document(stored), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        Printer().note(f"exported run {run_id} ({len(stored.events)} events) to {output}")
    return 0


@runs.command("import")
@click.argument("file", metavar="FILE")
@click.option("--run-id", "new_id", metavar="ID", help="store it under this id instead (a copy)")
@_db_option
def runs_import(file: str, new_id: str | None, db: str | None) -> int:
    """Store a run written by runs export.

    FILE is the exported JSON, or - for stdin. The lease is cleared; --run-id
    stores a copy under another id.
    """
    choice = _choice(db)
    if file == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = Path(file).read_text(encoding="utf-8"), file
        except OSError as exc:
            raise store.CliError(f"cannot read {file}: {exc.strerror or exc}") from None

    async def body() -> int:
        run = store.import_document(text, source=source, run_id=new_id)
        async with _opened(choice, create=True) as backend:
            try:
                await backend.create_run(run.header, run.events)
            except RunExistsError:
                raise store.CliError(
                    f"run {run.header.run_id!r} already exists in {choice.url}; delete it first "
                    "(runs delete) or import a copy under another id with --run-id NEW_ID"
                ) from None
        Printer().line(
            f"imported run {run.header.run_id} ({run.header.state.value}, "
            f"{len(run.events)} events) into {choice.url}"
        )
        return 0

    return _run(body())


@runs.command("delete")
@click.argument("run_id")
@_db_option
def runs_delete(run_id: str, db: str | None) -> int:
    """Delete a run and its events."""
    choice = _choice(db)

    async def body() -> int:
        async with _opened(choice) as backend:
            if not await backend.delete_run(run_id):
                raise _missing(run_id, choice)
        Printer().line(f"deleted run {run_id}")
        return 0

    return _run(body())


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
    type=_STATES,
    help="only runs in this state (repeatable; default DONE and CANCELLED)",
)
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@_json_option
@_db_option
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
    choice = _choice(db)
    cutoff = datetime.now(UTC) - older_than
    wanted = _states(states) or [RunState.DONE, RunState.CANCELLED]
    names = " or ".join(s.value for s in wanted)

    async def body() -> int:
        started = time.perf_counter()
        async with _opened(choice) as backend:
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
            f"{_when(cutoff)} UTC ({seconds:.2f} s)"
        )
        return 0

    return _run(body())


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


# -- runs resume / approve / reject / cancel -----------------------------------------------------

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
def runs_resume(run_id: str, agent_spec: str, timeout: float | None) -> int:
    """Continue a run with its agent.

    After a failure (ERROR), after its process died, or after decisions. The
    run is continued in the agent's own store.
    """

    async def body() -> int:
        return await _continue(agent_spec, run_id, timeout=timeout)

    return _run(body())


async def _continue(
    agent_spec: str,
    run_id: str,
    *,
    approvals: dict[str, bool | str] | None = None,
    timeout: float | None = None,
) -> int:
    agent = store.load_agent(agent_spec)
    try:
        output = await agent.continue_run_async(
            run_id=run_id, approvals=approvals, return_output=True, timeout=timeout
        )
    finally:
        await agent.db.close()
    out = Printer()
    out.line(f"run {output.run_id} is {output.state.value}")
    _next_steps(out, output, output.run_id)
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
@_db_option
def runs_approve(run_id: str, requirement_id: str, agent_spec: str | None, db: str | None) -> int:
    """Approve what a WAITING run waits for.

    Without --agent the decision is only recorded; runs resume (or any
    continue_run_async) goes on from there.
    """
    return _run(_decide(run_id, requirement_id, True, agent_spec, db))


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
@_db_option
def runs_reject(
    run_id: str, requirement_id: str, reason: str | None, agent_spec: str | None, db: str | None
) -> int:
    """Reject what a WAITING run waits for.

    The model is told, with --reason. Without --agent the decision is only
    recorded.
    """
    return _run(_decide(run_id, requirement_id, reason or False, agent_spec, db))


async def _decide(
    run_id: str, requirement_id: str, approval: bool | str, agent_spec: str | None, db: str | None
) -> int:
    if agent_spec is not None:
        return await _continue(agent_spec, run_id, approvals={requirement_id: approval})
    choice = _choice(db)
    async with _opened(choice) as backend:
        try:
            header = await backend.get_run(run_id)
        except RunNotFoundError:
            raise _missing(run_id, choice) from None
        state = await store.record_decision(backend, header, {requirement_id: approval})
    verb = "approved" if approval is True else "rejected"
    out = Printer()
    out.line(f"{verb} {requirement_id}; run {run_id} is {state.value}")
    if state is not RunState.WAITING:
        out.note(
            f"nothing runs until it is continued: {PROG} runs resume {run_id} "
            "--agent module:attribute"
        )
    return 0


@runs.command("cancel")
@click.argument("run_id")
@click.option(
    "--reason",
    default="cancelled from the command line",
    show_default=True,
    help="recorded with the cancellation",
)
@_db_option
def runs_cancel(run_id: str, reason: str, db: str | None) -> int:
    """Cancel a run.

    At once if no live process holds it; otherwise the process running it
    stops at its next transition.
    """
    choice = _choice(db)

    async def body() -> int:
        async with _opened(choice) as backend:
            try:
                state = await cancel_run(backend, run_id, reason=reason)
            except RunNotFoundError:
                raise _missing(run_id, choice) from None
        out = Printer()
        if state is RunState.CANCELLED:
            out.line(f"run {run_id} is CANCELLED")
        else:
            out.line(
                f"cancellation of run {run_id} requested; it is {state.value} and the process "
                "running it stops at its next transition"
            )
        return 0

    return _run(body())


# -- diagram -------------------------------------------------------------------------------------

_SUFFIXES: Final[dict[str, DiagramFormat]] = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}


@cli.command("diagram", context_settings=_CONTEXT)
@click.option(
    "--run",
    "run_id",
    metavar="RUN_ID",
    help="draw the path this run took (default: the whole machine)",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="default: from -o's suffix, else mermaid"
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write to FILE instead of stdout",
)
@_db_option
def diagram(run_id: str | None, fmt: str | None, output: Path | None, db: str | None) -> int:
    """Draw the state machine, or one run's path.

    Mermaid and DOT need nothing else; SVG and PNG need Graphviz
    (pip install 'durable-agent[diagrams]').
    """
    chosen: DiagramFormat = "mermaid"
    if fmt is not None:
        chosen = next(f for f in FORMATS if f == fmt)
    elif output is not None:
        chosen = _SUFFIXES.get(output.suffix.lower(), "mermaid")
    if chosen == "png" and output is None and sys.stdout.isatty():
        raise store.CliError("a PNG is binary: write it to a file with -o FILE")

    async def body() -> int:
        if run_id is None:
            drawn = machine_diagram(format=chosen)
        else:
            choice = _choice(db)
            async with _opened(choice) as backend:
                stored = await _load(backend, choice, run_id)
            drawn = run_diagram(stored, format=chosen)
        if output is None:
            sys.stdout.buffer.write(drawn.data)
            sys.stdout.flush()
        else:
            drawn.save(output)
            Printer().note(f"wrote {output}")
        return 0

    return _run(body())


# -- demo ----------------------------------------------------------------------------------------


def _at_least_one(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}", ctx, param)
    return value


@cli.command("demo", context_settings=_CONTEXT)
@click.option(
    "--db",
    "db",
    metavar="PATH",
    help="keep the SQLite database at PATH (or sqlite:///PATH); default: a temporary file, "
    "deleted afterwards",
)
@click.option(
    "--keep",
    is_flag=True,
    help="keep the temporary directory (database and tool ledger) and print its path",
)
@click.option(
    "--kill-after",
    type=int,
    callback=_at_least_one,
    metavar="N",
    default=_demo.DEFAULT_KILL_AFTER,
    show_default=True,
    help="SIGKILL the first process right after durable write N",
)
@click.option("--child", type=click.Choice(["start", "resume"]), hidden=True)
@click.option("--ledger", type=click.Path(path_type=Path), hidden=True)
@click.option("--run-id", hidden=True)
def demo(
    db: str | None,
    keep: bool,
    kill_after: int,
    child: str | None,
    ledger: Path | None,
    run_id: str | None,
) -> int:
    """Watch a run survive SIGKILL (offline).

    Runs an offline trip-planning agent on SQLite in a child process, SIGKILLs
    it right after a durable write, continues the run in a new process, and
    prints which steps were replayed from the store and which were executed.
    """
    _state().ran = True
    path = Path(db.removeprefix("sqlite:///")) if db is not None else None
    if child is not None:
        # The parent re-runs this command in child processes with these options.
        if path is None or ledger is None or run_id is None:
            raise click.UsageError("--child needs --db, --ledger and --run-id")
        return _demo.run_child(
            child, db_path=path, ledger=ledger, run_id=run_id, kill_after=kill_after
        )
    if path is not None and not path.parent.is_dir():
        raise click.UsageError(f"--db {path}: directory {path.parent} does not exist")
    try:
        return _demo.run_demo(db_path=path, keep=keep, kill_after=kill_after)
    except _demo.DemoError as exc:
        raise store.CliError(f"demo: {exc}") from exc


# -- the entry point -----------------------------------------------------------------------------


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"{PROG}: error: {first}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    Bad usage prints one line and raises ``SystemExit(2)``; ``--help`` and
    ``--version`` raise ``SystemExit(0)``; a failing command prints one line
    (the traceback too with ``--debug``) and returns 1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    state = _State()
    try:
        result = cli.main(args=args, prog_name=PROG, standalone_mode=False, obj=state)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else PROG
        message = exc.format_message().rstrip(".")
        print(f"{where}: error: {message} (see '{where} --help')", file=sys.stderr)
        raise SystemExit(2) from None
    except click.ClickException as exc:
        _fail(exc.format_message())
        return exc.exit_code
    except click.Abort:
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (DurableAgentError, OSError) as exc:
        if state.debug:
            raise
        _fail(str(exc) or type(exc).__name__)
        return 1
    except Exception as exc:
        if state.debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return 1
    if not state.ran:
        raise SystemExit(result if isinstance(result, int) else 0)
    return result if isinstance(result, int) else 0
