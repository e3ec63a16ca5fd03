"""Run the real ``durable-agent`` entry point in a new process, on a store with a run per state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests import _preloaded
from tests.cli.scenario import ROOT, build_store

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(
    *args: str,
    db: str | None = None,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``python -m durable_agent ARGS`` with ``DURABLE_AGENT_DB=db`` (unset when None).

    ``fresh=True`` starts a new interpreter even when a forked child would do.
    """
    environment = {
        k: v for k, v in os.environ.items() if k not in ("DURABLE_AGENT_DB", "FORCE_COLOR")
    }
    environment["PYTHONPATH"] = str(ROOT)  # so --agent tests.cli.scenario:... imports anywhere
    if db is not None:
        environment["DURABLE_AGENT_DB"] = db
    environment.update(env or {})
    if fresh or not _preloaded.forkable(environment):
        return _run_interpreter(args, cwd, environment, stdin)
    # A new process, forked from one that imported the package already (saves
    # ~0.6 s of CPU per command; tests/_preloaded.py says what it imitates).
    return _preloaded.run(
        module="durable_agent", args=args, env=environment, cwd=cwd, stdin=stdin, timeout=60
    )


def _run_interpreter(
    args: tuple[str, ...], cwd: Path, environment: dict[str, str], stdin: str | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable_agent", *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def pristine_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with runs.db: one run per state. Never changed: tests copy it."""
    folder = tmp_path_factory.mktemp("pristine")
    build_store(folder)
    return folder / "runs.db"


@pytest.fixture
def store(pristine_store: Path, tmp_path: Path) -> str:
    """The URL of this test's own copy of the store."""
    shutil.copy(pristine_store, tmp_path / "runs.db")
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def cli(store: str) -> Cli:
    """``cli(*args)`` runs the command on this test's store (through DURABLE_AGENT_DB)."""

    def call(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("db", store)
        return run_cli(*args, **kwargs)  # type: ignore[arg-type]

    return call
