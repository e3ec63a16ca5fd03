"""``durable-agent demo``: watch a run survive SIGKILL, offline.

The demo itself is `durable_agent._demo`; this command parses its options and
re-enters itself, with hidden options, in the child processes it kills.
"""

from __future__ import annotations

from pathlib import Path

import click

from durable_agent import _demo
from durable_agent.cli import _store as store
from durable_agent.cli._app import CONTEXT, cli, current_state

__all__ = ["demo"]


def _at_least_one(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}", ctx, param)
    return value


@cli.command("demo", context_settings=CONTEXT)
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
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of the report")
@click.option("--child", type=click.Choice(["start", "resume"]), hidden=True)
@click.option("--ledger", type=click.Path(path_type=Path), hidden=True)
@click.option("--run-id", hidden=True)
def demo(
    db: str | None,
    keep: bool,
    kill_after: int,
    as_json: bool,
    child: str | None,
    ledger: Path | None,
    run_id: str | None,
) -> int:
    """Watch a run survive SIGKILL (offline).

    Runs an offline trip-planning agent on SQLite in a child process, SIGKILLs
    it right after a durable write, continues the run in a new process, and
    prints which steps were replayed from the store and which were executed.
    """
    current_state().ran = True
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
        return _demo.run_demo(db_path=path, keep=keep, kill_after=kill_after, as_json=as_json)
    except _demo.DemoError as exc:
        raise store.CliError(f"demo: {exc}") from exc
