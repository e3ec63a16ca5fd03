"""``durable-agent migrate``: bring a store's layout and records up to this version.

Safe to run while workers use the store and to run again after a crash: each
step is atomic (`durable_agent.backend.Backend.migrate`). A store whose backend
has no migration of its own (`Capability.MIGRATE`) needs none: its older records
are upcast each time they are read.
"""

from __future__ import annotations

import dataclasses

import click

from durable_agent.backend import Capability
from durable_agent.cli._app import CONTEXT, choose, cli, db_option, json_option, opened, run_command
from durable_agent.cli._output import Printer
from durable_agent.records import SCHEMA_VERSION

__all__ = ["migrate"]


@cli.command("migrate", context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="say what would be done, change nothing")
@json_option
@db_option
def migrate(dry_run: bool, as_json: bool, db: str | None) -> int:
    """Migrate the store's own layout and its older records to this version.

    Each step is atomic (a transaction, a script or a file replaced under the
    run's lock), so it is safe while workers use the store. Idempotent: run it
    again after a crash, or to check (it reports nothing to do). Upgrade every
    process that uses the store first: an older release refuses records this
    one rewrote.
    """
    choice = choose(db)

    async def body() -> int:
        async with opened(choice) as backend:
            report = await backend.migrate(dry_run=dry_run)
            supported = Capability.MIGRATE in backend.capabilities
        out = Printer()
        if as_json:
            out.json(
                {**dataclasses.asdict(report), "steps": list(report.steps),
                 "schema_version": SCHEMA_VERSION, "supported": supported}
            )
            return 0
        layout = (
            f"layout {report.layout_before} -> {report.layout_after}"
            if report.layout_before is not None else "no layout version"
        )
        verb = "would rewrite" if dry_run else "rewrote"
        out.line(
            f"{choice.url}: {layout}; {verb} {report.runs_rewritten} of "
            f"{report.runs_checked} run(s) at record schema {SCHEMA_VERSION}"
        )
        for step in report.steps:
            out.line(f"  {step}")
        return 0

    return run_command(body())
