"""Run the real ``durable-agent`` entry point in a subprocess, on a store with a run per state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.cli.scenario import ROOT, build_store

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(
    *args: str,
    db: str | None = None,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m durable_agent ARGS`` with ``DURABLE_AGENT_DB=db`` (unset when None)."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("DURABLE_AGENT_DB", "FORCE_COLOR")
    }
    environment["PYTHONPATH"] = str(ROOT)  # so --agent tests.cli.scenario:... imports anywhere
    if db is not None:
        environment["DURABLE_AGENT_DB"] = db
    environment.update(env or {})
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
