"""More runs than connections on RedisBackend: calls queue for a connection, however long.

A busy pool is back-pressure from this process's own concurrency, not an outage,
so a run waits its turn instead of failing with `StoreUnavailableError`. The
tests hold every connection, let the runs queue behind them, move the event
loop's clock far past any deadline a wait might carry (no sleep, no timed
assertion: a deadline either exists and fires, or does not), then let go.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.errors import StoreUnavailableError
from durable_agent.fsm import RunState
from tests._barriers import wait_until_async
from tests.backends.conftest import new_run, run
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)

redis = pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends.redis import RedisBackend  # noqa: E402

RUNS = 40
AHEAD = 3600.0
"""Seconds the clock moves while the runs queue: far past the old 20 s pool timeout."""


async def _clock_ahead(seconds: float) -> None:
    """Move this loop's clock forward, and return once every timer now due has run."""
    loop = asyncio.get_running_loop()
    real = loop.time
    loop.time = lambda: real() + seconds  # type: ignore[method-assign]
    passed = asyncio.Event()
    # Timers run in deadline order, so this one runs after every deadline now past.
    loop.call_at(loop.time(), passed.set)
    await passed.wait()


def _queued(store: RedisBackend) -> int:
    """Calls waiting for a connection: at the backend's gate and in redis-py's pool."""
    link = store._connect()
    gate = getattr(link, "gate", None)
    waiting = len(getattr(gate, "_waiters", None) or ())
    pool = getattr(link.client, "connection_pool", None)
    condition = getattr(pool, "_condition", None)
    return waiting + len(getattr(condition, "_waiters", None) or ())


def _agent(store: RedisBackend) -> Agent:
    async def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    script: list[Any] = [ToolCall("weather", {"city": c}) for c in ("Oslo", "Rome")]
    return Agent(ScriptedModel([*script, "done"]), db=store, tools=[weather], retry=1)


async def _queue_behind(store: RedisBackend, hold: Any, let_go: Any) -> list[Any]:
    """Start RUNS runs while ``hold`` has every connection; let go once the clock moved on."""
    agent = _agent(store)
    await hold()
    runs = asyncio.gather(
        *(agent.do_async(Task("weather?", run_id=f"run-{i}")) for i in range(RUNS)),
        return_exceptions=True,
    )
    await wait_until_async(lambda: _queued(store) >= RUNS, awaiting="every run to queue")
    await _clock_ahead(AHEAD)
    await let_go()
    return list(await runs)


@pytest.fixture
def single(redis_url: str) -> Iterator[RedisBackend]:
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", max_connections=2)
    yield store
    run(store.close())


def test_runs_wait_for_a_busy_pool_however_long_instead_of_failing(single: RedisBackend) -> None:
    async def main() -> None:
        pool = single._client().connection_pool  # type: ignore[union-attr]
        held: list[Any] = []

        async def hold() -> None:
            held.extend([await pool.get_connection(), await pool.get_connection()])

        async def let_go() -> None:
            for connection in held:
                await pool.release(connection)

        outcomes = await _queue_behind(single, hold, let_go)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        headers = [await single.get_run(f"run-{i}") for i in range(RUNS)]
        assert {h.state for h in headers} == {RunState.DONE}
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2

    run(main())


def test_runs_on_a_cluster_wait_for_their_turn_however_long(
    redis_cluster_url: str,  # noqa: F811
) -> None:
    store = RedisBackend(
        redis_cluster_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", max_connections=2
    )

    async def main() -> None:
        gate = store._connect().gate
        assert gate is not None

        async def hold() -> None:
            await gate.acquire()
            await gate.acquire()

        async def let_go() -> None:
            gate.release()
            gate.release()

        outcomes = await _queue_behind(store, hold, let_go)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        headers = [await store.get_run(f"run-{i}") for i in range(RUNS)]
        assert {h.state for h in headers} == {RunState.DONE}
        await store.close()

    run(main())


def test_a_pool_timeout_bounds_the_wait_with_a_message_that_says_so(redis_url: str) -> None:
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", max_connections=1,
                         pool_timeout=5)

    async def main() -> None:
        await new_run(store, "r1")  # Redis is up: the pool, not Redis, is what runs out
        gate = store._connect().gate
        assert gate is not None
        await gate.acquire()
        waiting = asyncio.ensure_future(store.get_run("r1"))
        await wait_until_async(lambda: _queued(store) >= 1, awaiting="the call to queue")
        await _clock_ahead(60)
        with pytest.raises(StoreUnavailableError, match="pool_timeout=5") as caught:
            await waiting
        assert "max_connections" in str(caught.value)
        gate.release()
        assert (await store.get_run("r1")).seq == 1
        await store.close()

    run(main())
