"""Backend fixtures and helpers shared by the backend tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durable_agent.testing.conformance import at, created, header, new_run, step

__all__ = ["at", "created", "header", "new_run", "run", "step"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (the tests avoid a pytest plugin)."""
    return asyncio.run(coro)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


from tests.backends.redis_server import redis_url  # noqa: E402, F401  (a fixture)
