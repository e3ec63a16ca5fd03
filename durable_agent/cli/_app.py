"""The root ``durable-agent`` group, the options and helpers its commands share, and `main`.

Every command module of `durable_agent.cli` adds its commands to `cli` (or to
a group it adds there) and takes what it shares from here: the store chosen
by ``--db``, `run` to run a command's coroutine, `opened` and `load` to reach
the store, `missing` for a run that is not there, and `next_steps` to tell the
user what to do with a run. `main` turns every failure into one line on stderr.

Commands are loaded when they run: a `Group` knows each command's module and
one-line help from a table (`COMMANDS` here, the ``runs`` group's in
`durable_agent.cli.runs`) and imports the module only when the command is
called or its own help is asked for. Importing every command group up front
cost ~0.45 s of CPU on each ``durable-agent --help``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, ParamSpec, TypeVar

import click

from durable_agent.cli import _store as store
from durable_agent.errors import DurableAgentError, RunNotFoundError

if TYPE_CHECKING:
    from durable_agent.backend import Backend
    from durable_agent.cli._output import Printer
    from durable_agent.records import StoredRun
    from durable_agent.run import RunOutput

__all__ = [
    "COMMANDS",
    "CONTEXT",
    "PROG",
    "Group",
    "LazyCommand",
    "State",
    "choose",
    "cli",
    "current_state",
    "db_option",
    "json_option",
    "load",
    "main",
    "missing",
    "next_steps",
    "opened",
    "run_command",
]

PROG: Final = "durable-agent"
_P = ParamSpec("_P")
_T = TypeVar("_T")


# -- shared state, the group class, the --db option ------------------------------------------


@dataclass
class State:
    """What the root options set, shared with every command through ``ctx.obj``."""

    db: str | None = None
    debug: bool = False
    ran: bool = False
    """Set when a command ran (not just --help or --version)."""


class LazyCommand(NamedTuple):
    """A command not imported yet: the module that defines it, and its one-line help."""

    module: str
    """The module that adds the command to its group when imported."""
    help: str
    """The first paragraph of the command's docstring, as ``--help`` lists it."""


class Group(click.Group):
    """Commands listed in their table's order, loaded when used; usage errors kept to one line.

    ``lazy`` maps a command's name to the `LazyCommand` that says where it is
    defined. The module is imported the first time the command is looked up
    (to run it, or for its own ``--help``); the group's ``--help`` lists the
    table's one-line help and imports nothing. tests/cli/test_lazy.py checks
    that the table agrees with the commands.
    """

    def __init__(
        self, *args: Any, lazy: Mapping[str, LazyCommand] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, LazyCommand] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy, *(name for name in self.commands if name not in self.lazy)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name].module)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click's own, but a command not loaded yet is listed from its table entry:
        # a stand-in with the same help gives the same line, cut at the same width.
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None and name in self.lazy:
                command = click.Command(name, help=self.lazy[name].help)
            if command is not None and not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in rows])

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


CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""The context settings of every group and command: ``-h`` and a 100-column help."""

_DB_HELP: Final = (
    f"store URL, e.g. sqlite:///runs.db, redis://localhost:6379/0, file:///var/runs "
    f"(default: ${store.DB_ENV}, else {store.DEFAULT_DB})"
)


def db_option(function: Callable[_P, Any]) -> Callable[_P, Any]:
    """Add ``--db URL`` to a command (it wins over the root group's ``--db``)."""
    return click.option("--db", "db", metavar="URL", help=_DB_HELP)(function)


def json_option(function: Callable[_P, Any]) -> Callable[_P, Any]:
    """Add ``--json`` (passed as ``as_json``) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(function)


def current_state() -> State:
    """The `State` of the command running now (a fresh one outside `main`)."""
    obj = click.get_current_context().find_object(State)
    return obj if obj is not None else State()


def choose(db: str | None) -> store.StoreChoice:
    """The store a command works on: its own ``--db``, else the root's, else the default."""
    return store.choose_store(db or current_state().db)


def run_command(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a command's body (and mark that a command ran, for `main`'s exit status)."""
    import asyncio  # ~30 ms of CPU (it loads ssl) that --help does without

    current_state().ran = True
    return asyncio.run(coroutine)


@contextlib.asynccontextmanager
async def opened(choice: store.StoreChoice, *, create: bool = False) -> AsyncIterator[Backend]:
    """The chosen store, open for the ``async with`` block and closed after it."""
    backend = store.open_store(choice, create=create)
    async with backend:
        yield backend


def missing(run_id: str, choice: store.StoreChoice) -> store.CliError:
    """The error for a run the store does not have, with how to find the ones it has."""
    return store.CliError(
        f"run {run_id!r} not found in {choice.url} (from {choice.origin}); list the runs with: "
        f"{PROG} runs list"
    )


async def load(backend: Backend, choice: store.StoreChoice, run_id: str) -> StoredRun:
    """A run and its events, or `missing`'s error."""
    try:
        return await backend.load_run(run_id)
    except RunNotFoundError:
        raise missing(run_id, choice) from None


def next_steps(out: Printer, output: RunOutput, run_id: str) -> None:
    """Print what the run waits for, or the command that continues it, or its answer."""
    from durable_agent.fsm import RunState  # loaded by the commands that get here

    match output.state:
        case RunState.WAITING:
            out.line()
            for r in output.requirements:
                out.line(f"waiting for {r.id} ({r.kind}): {r.tool_name}({_args(r.arguments)})")
                if r.detail:
                    out.line(f"  {r.detail}")
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


# -- the root group ------------------------------------------------------------------------------

COMMANDS: Final = {
    "runs": LazyCommand(
        "durable_agent.cli.runs", "Inspect, export, clean up, decide, resume and cancel runs."
    ),
    "worker": LazyCommand(
        "durable_agent.cli.worker",
        "Claim runs of the given agents from the store and drive them until stopped.",
    ),
    "diagram": LazyCommand(
        "durable_agent.cli.diagram",
        "Draw the state machine, or one run's path, or several runs' side by side.",
    ),
    "demo": LazyCommand("durable_agent.cli.demo", "Watch a run survive SIGKILL (offline)."),
    "crashtest": LazyCommand(
        "durable_agent.cli.crashtest",
        "Kill an agent after each durable write, resume it, and report what ran again.",
    ),
    "ui": LazyCommand(
        "durable_agent.cli.ui",
        "Serve the run inspector: watch, understand and decide runs in a browser.",
    ),
    "migrate": LazyCommand(
        "durable_agent.cli.migrate",
        "Migrate the store's own layout and its older records to this version.",
    ),
}
"""The root group's commands, in the order help lists them (see `Group`)."""


@click.group(cls=Group, context_settings=CONTEXT, lazy=COMMANDS)
@click.option("--db", "db", metavar="URL", help=_DB_HELP)
@click.option("--debug", is_flag=True, help="show the traceback when a command fails")
@click.version_option(package_name="durable-agent", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, db: str | None, debug: bool) -> None:
    """LLM agent runs that survive crashes, kills, timeouts and API errors.

    Inspect the runs in a store, clean them up, decide what they wait for,
    resume them, and draw the state machine or the path one run took.
    """
    state = ctx.ensure_object(State)
    state.db = db
    state.debug = debug


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
    state = State()
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
