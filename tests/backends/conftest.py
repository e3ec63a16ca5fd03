"""Backend fixtures: every built-in backend, and helpers to build runs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import CreatedEvent, Lease, RunHeader, TransitionEvent, UserMessage

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop (the tests avoid a pytest plugin)."""
    return asyncio.run(coro)


def header(run_id: str, **fields: Any) -> RunHeader:
    """A header of a run whose log holds only its CreatedEvent (seq 1, PENDING by default)."""
    return RunHeader.model_validate({"run_id": run_id, "seq": 1, **fields})


def created(content: str = "hi") -> CreatedEvent:
    return CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content=content),))


def step(seq: int, state: RunState = RunState.MODEL_CALL) -> TransitionEvent:
    return TransitionEvent(seq=seq, state=state, trigger="start")


async def new_run(backend: Backend, run_id: str, **fields: Any) -> Lease:
    """Create a run (seq 1) and take its lease for 30 s."""
    await backend.create_run(header(run_id, **fields), [created()])
    return await backend.acquire_lease(run_id, LeaseOwner.current(), ttl=30)


def at(second: int) -> datetime:
    """A fixed, aware creation time: ``second`` seconds after 2024-01-01 UTC."""
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=second)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty store of each built-in kind; closed after the test."""
    store: Backend
    if request.param == "memory":
        store = MemoryBackend(session_id="s1", user_id="u1")
    else:
        store = SqliteBackend(tmp_path / "runs.db", session_id="s1", user_id="u1")
    yield store
    run(store.close())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"
