"""Engine tests run on every built-in backend that keeps runs across Agent objects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durable_agent.backend import Backend
from durable_agent.backends.memory import MemoryBackend

T = TypeVar("T")

StoreFactory = Callable[[], Backend]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (the tests avoid a pytest plugin)."""
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of backends that all see the same runs (a new 'process' view each call)."""
    opened: list[Backend] = []
    if request.param == "memory":
        shared = MemoryBackend(session_id="s1", user_id="u1")

        def factory() -> Backend:
            return shared

        opened.append(shared)
    else:
        from durable_agent.backends.sqlite import SqliteBackend

        path = tmp_path / "runs.db"

        def factory() -> Backend:
            backend = SqliteBackend(path, session_id="s1", user_id="u1")
            opened.append(backend)
            return backend

    yield factory
    for backend in opened:
        asyncio.run(backend.close())
