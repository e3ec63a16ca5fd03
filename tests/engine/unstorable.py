"""What the unstorable-value tests share: a store on every durable backend, agents and loads
on their own backend objects, and readers of what the run recorded.

The fixtures ``url`` and ``stores`` are `store_url` and `opened_stores`: import them
under those names, so the tests' own ``url`` and ``stores`` parameters do not
shadow the imports, and import ``redis_url`` beside them (``url`` asks for it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, ChatModel, open_backend
from durable_agent.backend import Backend
from durable_agent.records import FailedEvent, OutputRejectedEvent, StoredRun
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)

__all__ = [
    "Counter",
    "agent_on",
    "failures",
    "kinds",
    "load",
    "nested",
    "opened_stores",
    "rejections",
    "store_url",
]


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(name="url", params=["sqlite", "jsonfile", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The fixture ``url``: a fresh store on each durable built-in backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if request.param == "jsonfile":
        return f"file://{tmp_path / 'runs'}"
    server: str = request.getfixturevalue("redis_url")
    return f"{server}?prefix=unstorable-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(name="stores")
def opened_stores(url: str) -> Iterator[list[Backend]]:
    """The fixture ``stores``: backends opened by a test, closed after it."""
    opened: list[Backend] = []
    yield opened
    for backend in opened:
        asyncio.run(backend.close())


class Counter:
    """How many times each tool ran."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        self.runs[name] = self.runs.get(name, 0) + 1


def agent_on(url: str, stores: list[Backend], model: ChatModel, tools: Sequence[Any] = (),
             retry: int = 3) -> Agent:
    """An Agent on its own backend object, as a new process would open it."""
    backend = open_backend(url)
    stores.append(backend)
    return Agent(model, db=backend, tools=tools, retry=retry)


def load(url: str, stores: list[Backend], run_id: str) -> StoredRun:
    backend = open_backend(url)
    stores.append(backend)
    return asyncio.run(backend.load_run(run_id))


def kinds(stored: StoredRun) -> list[str]:
    return [e.kind for e in stored.events]


def rejections(stored: StoredRun) -> list[OutputRejectedEvent]:
    return [e for e in stored.events if isinstance(e, OutputRejectedEvent)]


def failures(stored: StoredRun) -> list[FailedEvent]:
    return [e for e in stored.events if isinstance(e, FailedEvent)]
