"""What the migration crash tests of every store share: reading all runs, the migrate command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from durable_agent.backend import Backend
from durable_agent.records import StoredRun


def load_all(open_store: Callable[[], Backend], run_ids: list[str]) -> dict[str, StoredRun]:
    """Every run as read, its header's version left out (the one field migrate updates)."""

    async def read() -> dict[str, StoredRun]:
        async with open_store() as db:
            loaded = await asyncio.gather(*(db.load_run(run_id) for run_id in run_ids))
        return {
            run.header.run_id: run.model_copy(
                update={"header": run.header.model_copy(update={"schema_version": 0})}
            )
            for run in loaded
        }

    return asyncio.run(read())


def migrate_command(url: str) -> list[str]:
    """``durable-agent migrate --db URL --json`` in a new interpreter (to be SIGKILLed)."""
    code = "import sys; from durable_agent.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "migrate", "--db", url, "--json"]
