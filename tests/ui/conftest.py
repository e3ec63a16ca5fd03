"""The inspector's fixtures: a store of real runs, a server per module, headless Chromium.

The store is built once per session (a SIGKILLed and resumed run among its
runs, tests/ui/scenario.py); each module that starts a server works on its
own copy. The browser is Debian's chromium driven by Playwright (no browser
download); without it the browser tests skip, and under CI (``CI=true``)
they fail, as the Redis tests do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui import scenario, server

CHROMIUM = Path("/usr/bin/chromium")


def missing(reason: str) -> None:
    """Skip, or fail under CI, which must run every inspector test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the inspector's browser tests, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pristine_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs.db filled by real runs; never changed: modules copy it."""
    folder = tmp_path_factory.mktemp("ui-pristine")
    scenario.build_store(folder)
    return folder / "runs.db"


def copy_store(pristine: Path, folder: Path) -> str:
    """A copy of the pristine store in ``folder``; its URL."""
    shutil.copy(pristine, folder / "runs.db")
    return f"sqlite:///{folder / 'runs.db'}"


@pytest.fixture(scope="module")
def module_store(pristine_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """This module's own copy of the store."""
    return copy_store(pristine_runs, tmp_path_factory.mktemp("ui-store"))


@pytest.fixture(scope="module")
def inspector(module_store: str) -> Iterator[server.Server]:
    """``durable-agent ui`` on the module's store, continuing runs with the support agent."""
    running = server.start(
        module_store,
        extra=["--agent", "tests.ui.scenario:support", "--user", "ops-ana", "--fleet-wait", "0.5"],
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    if not CHROMIUM.exists():
        missing("no /usr/bin/chromium (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, inspector: server.Server) -> Iterator[Any]:
    """A fresh page, logged in (the token URL sets the cookie)."""
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(60_000)
    opened.goto(inspector.login)
    yield opened
    context.close()
