"""A new run's id: refused where the run would be created when a store could not keep it intact,
with nothing stored, on every store; a run stored under such an id before is found by it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from durable_agent import Agent, ConfigurationError, RunState, ScriptedModel, Task, Worker
from durable_agent._names import LONGEST_LABEL, LONGEST_RUN_ID
from durable_agent.backend import Backend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import RunNotFoundError
from durable_agent.records import CreatedEvent, RunHeader, UserMessage
from tests._barriers import wait_until_async
from tests.backends import postgres_server

REFUSED = [
    pytest.param("a\x1fb", "'\\x1f' at position 1", id="unit-separator"),
    pytest.param("a\x00b", "'\\x00' at position 1", id="NUL"),
    pytest.param("two\nlines", "'\\n' at position 3", id="line-feed"),
    pytest.param("\ttab", "'\\t' at position 0", id="tab"),
    pytest.param("del\x7f", "'\\x7f' at position 3", id="DEL"),
    pytest.param("c1\x85", "'\\x85' at position 2", id="C1-control"),
    pytest.param("a\udce9", "'\\udce9' at position 1", id="lone-surrogate"),
    pytest.param(
        "r" * (LONGEST_RUN_ID + 1),
        f"{LONGEST_RUN_ID + 1} characters long; a new run's id may hold at most {LONGEST_RUN_ID}",
        id="too-long",
    ),
    pytest.param("   ", "must be a non-empty str", id="blank"),
]
"""Each refused new run id, and what the error says about it."""

OLD_IDS = [
    pytest.param("old\x1frun", {"memory", "sqlite", "redis", "postgres"}, id="unit-separator"),
    pytest.param("old\x00run", {"memory", "sqlite", "redis"}, id="NUL"),
    pytest.param("two\nlines", {"memory", "sqlite", "redis", "postgres"}, id="line-feed"),
    pytest.param("c1\x85", {"memory", "sqlite", "jsonfile", "redis", "postgres"}, id="C1"),
    pytest.param(
        "r" * 150, {"memory", "sqlite", "jsonfile", "redis", "postgres"}, id="over-the-limit"
    ),
]
"""Ids refused for new runs now, and the stores that could hold them (JSON files never took a
control character in a folder name; PostgreSQL ``TEXT`` never took NUL)."""


def _agent(db: Backend) -> Agent:
    return Agent(ScriptedModel(["done"] * 4), db=db, name="adder")


def _created() -> CreatedEvent:
    return CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="x"),))


async def _store_raw(db: Backend, run_id: str) -> None:
    """Store a run the way a store written before the check holds it: below every check."""
    await db.create_run(RunHeader(run_id=run_id, agent_name="adder", seq=1), [_created()])


async def _stream(agent: Agent, run_id: str) -> None:
    async with agent.stream_async(Task("x", run_id=run_id)) as stream:
        async for _ in stream:
            pass


def _kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["durable_store"]
    return kind


def _refused_as(caught: pytest.ExceptionInfo[ConfigurationError], where: str, says: str) -> None:
    text = str(caught.value)
    assert text.startswith(where), text
    assert says in text, text
    text.encode("utf-8")  # printable: the refused character is escaped


@pytest.mark.parametrize(("run_id", "says"), REFUSED)
def test_a_new_run_id_a_store_cannot_keep_is_refused_everywhere_a_run_is_created(
    durable_store: Callable[[], Backend], run_id: str, says: str
) -> None:
    async def main() -> None:
        db = durable_store()
        agent = _agent(db)
        with pytest.raises(ConfigurationError) as caught:
            await agent.do_async(Task("x", run_id=run_id))
        _refused_as(caught, "Task(run_id=...)", says)
        with pytest.raises(ConfigurationError) as caught:
            await agent.submit_async(Task("x", run_id=run_id))
        _refused_as(caught, "Task(run_id=...)", says)
        with pytest.raises(ConfigurationError) as caught:
            await _stream(agent, run_id)
        _refused_as(caught, "Task(run_id=...)", says)
        assert (await db.list_runs()).runs == ()
        await _store_raw(db, "source")
        with pytest.raises(ConfigurationError) as caught:
            await agent.fork_run_async("source", at_seq=1, new_run_id=run_id)
        _refused_as(caught, "fork(new_run_id=...)", says)
        assert [h.run_id for h in (await db.list_runs()).runs] == ["source"]
        await db.close()

    asyncio.run(main())


def test_the_message_says_which_characters_a_new_run_id_may_hold() -> None:
    async def main() -> None:
        with pytest.raises(ConfigurationError) as caught:
            await _agent(MemoryBackend()).do_async(Task("x", run_id="a\x00b"))
        text = str(caught.value)
        assert "a new run's id may hold any printable text" in text
        assert "no control characters" in text
        assert "no lone surrogates" in text

    asyncio.run(main())


@pytest.mark.parametrize(("run_id", "holders"), OLD_IDS)
def test_a_run_stored_under_an_id_now_refused_is_still_found_and_continued_by_it(
    durable_store: Callable[[], Backend],
    request: pytest.FixtureRequest,
    run_id: str,
    holders: set[str],
) -> None:
    if _kind(request) not in holders:
        pytest.skip(f"{_kind(request)} could never store this id")

    async def main() -> None:
        db = durable_store()
        await _store_raw(db, run_id)
        agent = _agent(db)
        assert (await agent.get_run_async(run_id)).state is RunState.PENDING
        assert await agent.continue_run_async(run_id) == "done"
        # Starting the task again continues the stored run (nothing new is created) ...
        assert await agent.do_async(Task("x", run_id=run_id)) == "done"
        # ... and submitting it returns its handle instead of storing it twice.
        handle = await agent.submit_async(Task("x", run_id=run_id))
        assert handle.run_id == run_id
        assert (await handle.result(timeout=60)).state is RunState.DONE
        fork = await agent.fork_run_async(run_id, at_seq=1)
        assert fork.output == "done"
        assert sorted(h.run_id for h in (await db.list_runs()).runs) == sorted(
            [run_id, fork.run_id]
        )
        stored = await db.load_run(run_id)
        assert (stored.header.run_id, stored.header.state) == (run_id, RunState.DONE)
        assert await db.delete_run(run_id)
        await _store_raw(db, run_id)
        assert (await agent.cancel_run_async(run_id)).state is RunState.CANCELLED
        await db.close()

    asyncio.run(main())


@pytest.mark.parametrize(("run_id", "holders"), OLD_IDS)
def test_a_worker_drives_a_submitted_run_stored_under_an_id_now_refused(
    durable_store: Callable[[], Backend],
    request: pytest.FixtureRequest,
    run_id: str,
    holders: set[str],
) -> None:
    if _kind(request) not in holders:
        pytest.skip(f"{_kind(request)} could never store this id")

    async def main() -> None:
        db = durable_store()
        await _store_raw(db, run_id)
        worker = Worker([_agent(db)])

        async def done() -> bool:
            return (await db.get_run(run_id)).state is RunState.DONE

        task = asyncio.create_task(worker.run(handle_signals=False))
        await wait_until_async(done, awaiting="the run stored under the old id DONE")
        worker.stop()
        await asyncio.wait_for(task, 60)
        await db.close()

    asyncio.run(main())


def test_an_id_holding_nul_is_not_found_on_postgresql_rather_than_the_store_down(
    durable_store: Callable[[], Backend], request: pytest.FixtureRequest
) -> None:
    if _kind(request) != "postgres":
        pytest.skip("only PostgreSQL cannot send NUL")

    async def main() -> None:
        db = durable_store()
        agent = _agent(db)
        with pytest.raises(RunNotFoundError, match="not found"):
            await agent.get_run_async("a\x00b")
        with pytest.raises(RunNotFoundError, match="PostgreSQL cannot store NUL"):
            await db.load_run("a\x00b")
        with pytest.raises(RunNotFoundError, match="PostgreSQL cannot store NUL"):
            await db.request_cancel("a\x00b", "no")
        assert not await db.delete_run("a\x00b")
        await db.close()

    asyncio.run(main())


def test_the_longest_new_run_id_is_stored_beside_the_longest_session_id_on_postgresql() -> None:
    """The limit is what PostgreSQL's ``(session_id, created_at, run_id)`` index row can hold."""

    async def main() -> None:
        # Four UTF-8 bytes each, and random: PostgreSQL compresses a repetitive index row.
        chars = random.Random(24)
        session = "".join(chr(chars.randrange(0x10000, 0x110000)) for _ in range(LONGEST_LABEL))
        run_id = "".join(chr(chars.randrange(0x10000, 0x110000)) for _ in range(LONGEST_RUN_ID))
        async with PostgresBackend(
            postgres_server.URL, schema=schema, session_id=session, user_id=session
        ) as db:
            handle = await _agent(db).submit_async(Task("x", run_id=run_id))
            (found,) = (await db.list_runs(session_id=session)).runs
            assert found.run_id == handle.run_id == run_id
            (found,) = (await db.list_runs(user_id=session)).runs
            assert found.run_id == run_id

    postgres_server.admin("SELECT 1")  # skips (fails under CI) when the server is down
    schema = postgres_server.new_schema()
    try:
        asyncio.run(main())
    finally:
        postgres_server.drop(schema)


def test_a_printable_new_run_id_of_any_script_is_stored_on_every_store(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        run_id = "café-队列 {tag}:|" + "r" * 40
        assert await _agent(db).do_async(Task("x", run_id=run_id)) == "done"
        assert (await db.get_run(run_id)).state is RunState.DONE
        await db.close()

    asyncio.run(main())


@pytest.mark.parametrize("most", [-1, True, False, 1.5, "2", None], ids=repr)
def test_a_worker_refuses_a_queue_cap_that_is_not_an_int_of_at_least_zero(most: object) -> None:
    agent = _agent(MemoryBackend())
    with pytest.raises(ConfigurationError) as caught:
        Worker([agent], max_running={"mail": most})  # type: ignore[dict-item]
    text = str(caught.value)
    assert text.startswith(f"Worker(max_running={{'mail': {most!r}}})"), text
    assert "must be an int >= 0" in text


def test_a_worker_takes_a_queue_cap_of_zero_and_more() -> None:
    agent = _agent(MemoryBackend())
    caps = {"paused": 0, "mail": 1, "bulk": 10**6}
    assert Worker([agent], max_running=caps).max_running == caps
