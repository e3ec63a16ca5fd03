"""How the ``durable-agent`` command prints: rich on a terminal, plain text otherwise.

A pipe or a file gets plain, aligned columns with no colour and no box
drawing, so ``grep``, ``awk`` and ``cut`` work on it; ``--json`` gives
machine-readable output. rich is imported only when it is used (a terminal,
or ``FORCE_COLOR`` set), which keeps non-interactive calls quick.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from durable_agent._timeline import abridge

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Column", "Printer", "abridge"]


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its heading, and a rich style used on a terminal."""

    heading: str
    style: str = ""
    right: bool = False


class Printer:
    """Writes results to stdout and notes to stderr, richly on a terminal."""

    def __init__(self, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.rich = _wants_rich(self.stdout)
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stdout, highlight=False, soft_wrap=False)
        return self._console

    def line(self, text: str = "", *, style: str = "") -> None:
        """One line of output (``style`` applies on a terminal only)."""
        if self.rich:
            from rich.text import Text

            self.console.print(Text(text, style=style))
        else:
            print(text, file=self.stdout)

    def note(self, text: str) -> None:
        """A hint for the person, on stderr so that stdout stays parseable."""
        print(text, file=self.stderr)

    def json(self, value: object) -> None:
        """``value`` as indented JSON (never styled)."""
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.stdout)

    def fields(self, rows: Sequence[tuple[str, str]]) -> None:
        """``name  value`` lines, names aligned."""
        width = max((len(name) for name, _ in rows), default=0)
        for name, value in rows:
            if self.rich:
                from rich.text import Text

                text = Text(f"{name:<{width}}  ", style="bold")
                text.append(value)
                self.console.print(text)
            else:
                print(f"{name:<{width}}  {value}".rstrip(), file=self.stdout)

    def table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[str]], *, title: str = ""
    ) -> None:
        """A table: rich on a terminal; otherwise a heading line and aligned columns."""
        if self.rich:
            from rich import box
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title or None, box=box.SIMPLE_HEAD, title_justify="left")
            for column in columns:
                table.add_column(
                    column.heading,
                    style=column.style or None,
                    justify="right" if column.right else "left",
                    overflow="fold",
                )
            for row in rows:
                # Text, not str: a cell such as "[call_0_0]" is data, never rich markup.
                table.add_row(*(Text(cell) for cell in row))
            self.console.print(table)
            return
        if title:
            print(title, file=self.stdout)
        widths = [len(c.heading) for c in columns]
        for row in rows:
            for index, cell in enumerate(row):
                widths[index] = max(widths[index], len(cell))
        for cells in ([c.heading for c in columns], *rows):
            parts = [
                f"{cell:>{widths[i]}}" if columns[i].right else f"{cell:<{widths[i]}}"
                for i, cell in enumerate(cells)
            ]
            print("  ".join(parts).rstrip(), file=self.stdout)


def _wants_rich(stream: IO[str]) -> bool:
    # FORCE_COLOR is the convention rich itself follows (NO_COLOR keeps the
    # tables and drops the colours, which rich also does by itself).
    if os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
