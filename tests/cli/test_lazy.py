"""The command line imports a command's module only when that command runs.

Each check starts a fresh interpreter (a forked one has every module loaded
already) and reads ``sys.modules`` after the command.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from durable_agent.cli import cli
from durable_agent.cli._app import Group
from tests.cli.scenario import ROOT

COMMAND_MODULES = (
    "durable_agent.cli.runs",
    "durable_agent.cli.runs_read",
    "durable_agent.cli.runs_follow",
    "durable_agent.cli.runs_write",
    "durable_agent.cli.decide",
    "durable_agent.cli.fork",
    "durable_agent.cli.worker",
    "durable_agent.cli.diagram",
    "durable_agent.cli.demo",
    "durable_agent.cli.crashtest",
    "durable_agent.cli.ui",
    "durable_agent.cli.migrate",
)
HEAVY = ("durable_agent.records", "durable_agent.engine", "durable_agent.agent", "pydantic")

_CHILD = """
import importlib, json, sys
from durable_agent.cli import main
preload, *args = sys.argv[1:]
for module in filter(None, preload.split(",")):
    importlib.import_module(module)
try:
    status = main(args)
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _fresh(*args: str, preload: tuple[str, ...] = ()) -> tuple[int, str, set[str]]:
    """Exit status, stdout, and the modules loaded after ``durable-agent ARGS`` in a new process.

    The ``preload`` modules are imported before the command.
    """
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, ",".join(preload), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return int(report["status"] or 0), done.stdout, set(report["modules"])


def _groups(group: Group) -> list[Group]:
    found = [group]
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        if isinstance(command, Group):
            found += _groups(command)
    return found


def test_help_lists_every_command_without_importing_one() -> None:
    status, out, modules = _fresh("--help")
    assert status == 0
    assert not modules & {*COMMAND_MODULES, *HEAVY}
    for name in ("runs", "worker", "diagram", "demo", "crashtest", "ui", "migrate"):
        assert f"\n  {name} " in out


def test_runs_help_imports_the_runs_group_alone() -> None:
    status, out, modules = _fresh("runs", "--help")
    assert status == 0
    assert modules & set(COMMAND_MODULES) == {"durable_agent.cli.runs"}
    assert "list " in out
    assert "fork " in out


def test_runs_list_imports_its_own_module_and_not_the_agent_or_the_engine(
    tmp_path: Path,
) -> None:
    status, _, modules = _fresh("runs", "list", "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert status == 1  # no store there: the command ran and said so
    assert modules & set(COMMAND_MODULES) == {
        "durable_agent.cli.runs",
        "durable_agent.cli.runs_read",
    }
    assert "durable_agent.engine" not in modules
    assert "durable_agent.agent" not in modules
    assert "durable_agent.tools" not in modules


def test_help_read_from_the_tables_is_the_help_of_the_loaded_commands() -> None:
    for args in (("--help",), ("runs", "--help")):
        _, from_tables, _ = _fresh(*args)
        _, from_commands, _ = _fresh(*args, preload=COMMAND_MODULES)
        assert from_tables == from_commands


def test_each_table_entry_names_the_module_and_help_of_its_command() -> None:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    for group in _groups(cli):
        assert set(group.commands) == set(group.lazy), group.name
        for name, entry in group.lazy.items():
            command = group.commands[name]
            callback = command.callback
            assert callback is not None
            assert callback.__module__ == entry.module, f"{group.name} {name}"
            first = inspect.cleandoc(command.help or "").split("\n\n")[0]
            assert " ".join(first.split()) == entry.help, f"{group.name} {name}"


@pytest.mark.parametrize("args", [("migrate", "--help"), ("runs", "show", "--help")])
def test_a_commands_own_help_loads_it(args: tuple[str, ...]) -> None:
    status, out, modules = _fresh(*args)
    assert status == 0
    assert "--db URL" in out
    assert modules & set(COMMAND_MODULES)


def test_an_unknown_command_lists_the_choices_from_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durable_agent", "runs", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid choice: 'nope' (choose from 'list', 'show', 'export', 'follow'" in done.stderr
