"""``durable-agent diagram``: the state machine, or the path one run took.

The drawing is `durable_agent.diagram`'s; this command only picks the format
(``--format``, else ``-o``'s suffix, else Mermaid) and where it goes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

import click

from durable_agent.cli import _store as store
from durable_agent.cli._app import (
    CONTEXT,
    choose,
    cli,
    db_option,
    json_option,
    load,
    opened,
    run_command,
)
from durable_agent.cli._output import Printer
from durable_agent.diagram import (
    FORMATS,
    DiagramFormat,
    machine_diagram,
    run_diagram,
    runs_diagram,
)

__all__ = ["diagram"]


_SUFFIXES: Final[dict[str, DiagramFormat]] = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}


@cli.command("diagram", context_settings=CONTEXT)
@click.option(
    "--run",
    "run_ids",
    metavar="RUN_ID",
    multiple=True,
    help="draw the path this run took (default: the whole machine); repeat it to draw "
    "runs side by side, such as a fork and its source",
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
@json_option
@db_option
def diagram(
    run_ids: tuple[str, ...],
    fmt: str | None,
    output: Path | None,
    as_json: bool,
    db: str | None,
) -> int:
    """Draw the state machine, or one run's path, or several runs' side by side.

    Mermaid and DOT need nothing else; SVG and PNG need Graphviz
    (pip install 'durable-agent[diagrams]'). --json prints the format, the run
    and the text (or, for PNG or with -o, the file and its size) as JSON.
    """
    chosen: DiagramFormat = "mermaid"
    if fmt is not None:
        chosen = next(f for f in FORMATS if f == fmt)
    elif output is not None:
        chosen = _SUFFIXES.get(output.suffix.lower(), "mermaid")
    if chosen == "png" and output is None and (as_json or sys.stdout.isatty()):
        raise store.CliError("a PNG is binary: write it to a file with -o FILE")

    async def body() -> int:
        if not run_ids:
            drawn = machine_diagram(format=chosen)
        else:
            choice = choose(db)
            async with opened(choice) as backend:
                stored = [await load(backend, choice, run_id) for run_id in run_ids]
            if len(stored) == 1:
                drawn = run_diagram(stored[0], format=chosen)
            else:
                drawn = runs_diagram(stored, format=chosen)
        if as_json:
            if output is not None:
                drawn.save(output)
            Printer().json(
                {
                    "format": chosen,
                    "run_id": run_ids[0] if len(run_ids) == 1 else None,
                    "run_ids": list(run_ids),
                    "file": str(output) if output is not None else None,
                    "bytes": len(drawn.data),
                    "text": drawn.text if output is None else None,
                }
            )
        elif output is None:
            sys.stdout.buffer.write(drawn.data)
            sys.stdout.flush()
        else:
            drawn.save(output)
            Printer().note(f"wrote {output}")
        return 0

    return run_command(body())
