"""A run cancelled because its event loop shuts down still records its interruption.

``asyncio.run()`` ending with runs in flight (the main coroutine returned, or
Ctrl-C) cancels their tasks, and each records the interruption and releases
its lease on the way out. Those writes must reach the store: the backend's
connections close only after the cancelled tasks have finished, and nothing
opened for them is left unclosed (a ResourceWarning when it is collected).
"""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from durable_agent import Agent, RunState, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend
from durable_agent.records import FailedEvent
from tests.backends.postgres_server import (
    drop,
    new_schema,
    postgres_url,  # noqa: F401  (a fixture)
)
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)

KINDS = ["sqlite", "jsonfile", "redis", "postgres"]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Backend]]:
    """A factory of the store under test: each event loop opens its own."""
    kind: str = request.param
    if kind == "sqlite":
        from durable_agent.backends.sqlite import SqliteBackend

        yield lambda: SqliteBackend(tmp_path / "runs.db")
    elif kind == "jsonfile":
        from durable_agent.backends.jsonfile import JsonFileBackend

        yield lambda: JsonFileBackend(tmp_path / "runs")
    elif kind == "redis":
        from durable_agent.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"shutdown-{uuid.uuid4().hex[:8]}:"
        yield lambda: RedisBackend(url, prefix=prefix)
    else:
        from durable_agent.backends.postgres import PostgresBackend

        url = request.getfixturevalue("postgres_url")
        schema = new_schema()
        yield lambda: PostgresBackend(url, schema=schema)
        drop(schema)


def _resource_warnings() -> list[str]:
    """What collecting garbage now warns of: unclosed sockets, transports, connections."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("opened", ["by the run", "before the run"])
def test_a_run_cancelled_by_its_loop_shutting_down_records_it_and_releases_its_lease(
    store: Callable[[], Backend], opened: str
) -> None:
    # "before the run": the store's connections are opened (and their closing
    # arranged) before the run's task exists, so the loop would close them first.
    db = store()
    started = asyncio.Event()
    calls: list[str] = []

    async def slow_lookup(order: str) -> str:
        """Look an order up (the first call never answers)."""
        calls.append(order)
        if len(calls) == 1:
            started.set()
            await asyncio.Event().wait()
        return "shipped"

    script: list[object] = [[ToolCall("slow_lookup", {"order": "A-1"})], "done"]
    agent = Agent(ScriptedModel(script), db=db, tools=[slow_lookup])
    task = Task("Where is order A-1?")

    running: list[asyncio.Future[object]] = []

    async def main() -> None:
        if opened == "before the run":
            await db.list_runs(limit=1)
        running.append(asyncio.ensure_future(agent.do_async(task)))
        await asyncio.wait_for(started.wait(), timeout=60)
        # Returning now leaves the run in flight: asyncio.run cancels it.

    asyncio.run(main())
    assert _resource_warnings() == []
    assert task.run_id is not None

    async def finish() -> str:
        await db.close()  # from a new loop, as an application may at exit
        later = store()
        try:
            stored = await later.load_run(task.run_id or "")
            header, last = stored.header, stored.events[-1]
            assert header.lease is None, f"{header.run_id} kept its lease: {header}"
            assert header.state is RunState.ERROR
            assert isinstance(last, FailedEvent)
            assert last.failed_state is RunState.TOOL_EXEC
            # Continued at once (no lease to wait out), from the tool call it was cut off in.
            resumed = Agent(ScriptedModel(script), db=later, tools=[slow_lookup])
            return str(await resumed.continue_run_async(run_id=header.run_id))
        finally:
            await later.close()

    assert asyncio.run(finish()) == "done"
    assert calls == ["A-1", "A-1"]
    assert _resource_warnings() == []
