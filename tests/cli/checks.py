"""What the CLI tests check on a finished command, and what they expect of the scenario's runs.

``ok`` and ``fails`` read a command's outcome (exit code, one-line errors, no
traceback); ``column``, ``timeline_seqs`` and ``states_of`` read its output;
``NEWEST_FIRST`` is the listing order of `tests.cli.scenario`'s runs and
``CALCULATOR`` / ``REFUNDS`` the ``--agent`` values that continue them.
"""

from __future__ import annotations

import json
import re
import subprocess

from durable_agent.fsm import RunState
from tests.cli.conftest import Cli
from tests.cli.scenario import RUNS

__all__ = [
    "CALCULATOR",
    "NEWEST_FIRST",
    "REFUNDS",
    "column",
    "fails",
    "ok",
    "states_of",
    "timeline_seqs",
]

NEWEST_FIRST = [
    RUNS[s]
    for s in (
        RunState.PENDING,
        RunState.CANCELLED,
        RunState.WAITING,
        RunState.ERROR,
        RunState.DONE,
        RunState.TOOL_EXEC,
        RunState.MODEL_CALL,
    )
]


CALCULATOR = "tests.cli.scenario:calculator"
REFUNDS = "tests.cli.scenario:refunds"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def fails(done: subprocess.CompletedProcess[str], message: str, *, code: int = 1) -> str:
    """The command failed with ``code`` and exactly one line on stderr containing ``message``."""
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("durable-agent"), done.stderr
    assert message in done.stderr, done.stderr
    return done.stderr


def column(stdout: str, index: int = 0) -> list[str]:
    """A column of a plain listing, without its heading."""
    return [line.split()[index] for line in stdout.splitlines()[1:] if line.strip()]


def timeline_seqs(stdout: str) -> list[int]:
    return [int(m[1]) for m in re.finditer(r"^\s*(\d+)  \d\d:\d\d:\d\d\.\d{3}", stdout, re.M)]


def states_of(cli: Cli) -> dict[str, str]:
    listing = json.loads(ok(cli("runs", "list", "--json", "--all")))
    return {run["run_id"]: run["state"] for run in listing["runs"]}
