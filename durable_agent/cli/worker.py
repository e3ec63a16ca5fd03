"""``durable-agent worker``: claim and drive runs from a store until stopped.

    durable-agent worker --db sqlite:///runs.db --agent myapp.agents:support \\
        [--agent myapp.agents:billing] [--concurrency 8] [--queue default] \\
        [--max-running mail=2] [--retry 3] [--grace 30] [--json]

Logs one line per claim, takeover, hand-over and release on stderr (``--json``:
one JSON object per line on stdout, for a log collector). SIGTERM or Ctrl-C
stops it gracefully; a second one exits at once.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Final

import click

from durable_agent.cli._app import CONTEXT, choose, cli, db_option, json_option, run_command
from durable_agent.cli._store import CliError, load_agent, open_store
from durable_agent.worker import RunRetry, Worker

__all__ = ["worker"]

_LOGGER: Final = "durable_agent.worker"


class _JsonLines(logging.Formatter):
    """One JSON object per record: time, level, message, and the run id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            line["run_id"] = run_id
        return json.dumps(line)


def _caps(pairs: tuple[str, ...]) -> dict[str, int]:
    caps: dict[str, int] = {}
    for pair in pairs:
        queue, sep, number = pair.rpartition("=")
        if not sep or not queue or not number.isdigit():
            raise CliError(f"--max-running {pair!r}: write QUEUE=N, for example mail=2")
        caps[queue] = int(number)
    return caps


@cli.command(context_settings=CONTEXT)
@db_option
@click.option(
    "--agent", "agents", metavar="MODULE:ATTR", multiple=True, required=True,
    help="an agent whose runs this worker drives (repeat for more)",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True,
              help="most runs driven at once")
@click.option("--queue", "queues", metavar="NAME", multiple=True,
              help="a queue to serve (repeat for more; default: every queue)")
@click.option("--max-running", "max_running", metavar="QUEUE=N", multiple=True,
              help="most runs of QUEUE running across the whole fleet")
@click.option("--retry", type=click.IntRange(min=0), default=0, show_default=True,
              help="resume runs failed with a retryable error up to N times (0: off)")
@click.option("--grace", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="seconds a stopping worker lets effects finish")
@json_option
def worker(
    db: str | None,
    agents: tuple[str, ...],
    concurrency: int,
    queues: tuple[str, ...],
    max_running: tuple[str, ...],
    retry: int,
    grace: float,
    as_json: bool,
) -> None:
    """Claim runs of the given agents from the store and drive them until stopped."""
    choice = choose(db)
    loaded = [load_agent(spec) for spec in agents]
    caps = _caps(max_running)
    logger = logging.getLogger(_LOGGER)
    handler = logging.StreamHandler(sys.stdout if as_json else sys.stderr)
    handler.setFormatter(
        _JsonLines() if as_json else logging.Formatter("%(asctime)s %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def body() -> None:
        store = open_store(choice, create=True)
        async with store:
            fleet_member = Worker(
                loaded,
                db=store,
                concurrency=concurrency,
                queues=queues or None,
                max_running=caps,
                retry=RunRetry(attempts=retry) if retry else None,
                grace=grace,
            )
            await fleet_member.run()

    try:
        run_command(body())
    finally:
        logger.removeHandler(handler)
