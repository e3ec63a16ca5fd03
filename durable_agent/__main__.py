"""The ``durable-agent`` command (also ``python -m durable_agent``).

Only ``durable-agent demo`` for now; the full command line arrives with its own
issue (durable_agent/cli.py in DESIGN.md §4).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from durable_agent import _demo
from durable_agent.errors import DurableAgentError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Reports bad usage in one line and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = _Parser(
        prog="durable-agent",
        description="LLM agent runs that survive crashes, kills, timeouts and API errors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="kill an agent run with SIGKILL mid-run and resume it in a new process",
        description=(
            "Run an offline trip-planning agent on SQLite in a child process, SIGKILL it "
            "right after a durable write, continue the run in a new process, and print "
            "which steps were replayed from the store and which were executed."
        ),
    )
    demo.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="keep the SQLite database at PATH (default: a temporary file, deleted afterwards)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (database and tool ledger) and print its path",
    )
    demo.add_argument(
        "--kill-after",
        type=_positive,
        default=_demo.DEFAULT_KILL_AFTER,
        metavar="N",
        help=f"SIGKILL the first process right after durable write N (default: "
        f"{_demo.DEFAULT_KILL_AFTER}; write 1 creates the run, an uninterrupted run makes "
        f"{_demo.UNINTERRUPTED_WRITES})",
    )
    # The parent re-runs this command in child processes with these options.
    demo.add_argument("--child", choices=("start", "resume"), help=argparse.SUPPRESS)
    demo.add_argument("--ledger", type=Path, help=argparse.SUPPRESS)
    demo.add_argument("--run-id", help=argparse.SUPPRESS)
    return parser, demo


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success)."""
    parser, demo = _parsers()
    args = parser.parse_args(argv)
    # `command` is required, and `demo` is the only one.
    if args.child is not None:
        if args.db is None or args.ledger is None or args.run_id is None:
            demo.error("--child needs --db, --ledger and --run-id")
        return _demo.run_child(
            args.child,
            db_path=args.db,
            ledger=args.ledger,
            run_id=args.run_id,
            kill_after=args.kill_after,
        )
    if args.db is not None and not args.db.parent.is_dir():
        demo.error(f"--db {args.db}: directory {args.db.parent} does not exist")
    try:
        return _demo.run_demo(db_path=args.db, keep=args.keep, kill_after=args.kill_after)
    except (_demo.DemoError, DurableAgentError, OSError) as exc:
        print(f"durable-agent demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
