"""Queue names, agent names, owner ids, session and user ids: refused where they are given when
a store could not keep them intact, with nothing stored; stored ones are read as they are."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from durable_agent import Agent, ConfigurationError, RunState, ScriptedModel, Worker
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import CreatedEvent, RunHeader, UserMessage
from durable_agent.registry import open_backend
from tests._barriers import wait_until_async

REFUSED = [
    pytest.param("a\x1fb", "'\\x1f' at position 1", id="unit-separator"),
    pytest.param("a\x00b", "'\\x00' at position 1", id="NUL"),
    pytest.param("two\nlines", "'\\n' at position 3", id="line-feed"),
    pytest.param("\t", "'\\t' at position 0", id="tab"),
    pytest.param("del\x7f", "'\\x7f' at position 3", id="DEL"),
    pytest.param("c1\x85", "'\\x85' at position 2", id="C1-control"),
    pytest.param("a\udce9", "'\\udce9' at position 1", id="lone-surrogate"),
    pytest.param("q" * 201, "201 characters long; a name may hold at most 200", id="too-long"),
    pytest.param("", "non-empty str", id="empty"),
    pytest.param(7, "non-empty str", id="not-a-str"),
]
"""Each refused name, and what the error says about it."""

ACCEPTED = "café 队列 {tag}:/|"
"""Printable text of every kind, separators of other layers included."""


def _agent(db: Backend, name: str = "adder") -> Agent:
    return Agent(ScriptedModel(["done"]), db=db, name=name)


def _says_what_is_allowed(exc: pytest.ExceptionInfo[ConfigurationError], where: str) -> None:
    text = str(exc.value)
    assert text.startswith(where)
    if "characters long" not in text and "non-empty" not in text:
        assert "no control characters" in text
        assert "no lone surrogates" in text
    text.encode("utf-8")  # printable: the refused character is escaped


@pytest.mark.parametrize(("name", "says"), REFUSED)
def test_a_queue_name_a_store_cannot_keep_is_refused_at_submit_and_nothing_is_stored(
    durable_store: Callable[[], Backend], name: object, says: str
) -> None:
    async def main() -> None:
        db = durable_store()
        with pytest.raises(ConfigurationError, match="submit\\(queue=") as caught:
            await _agent(db).submit_async("x", queue=name)  # type: ignore[arg-type]
        assert says in str(caught.value)
        _says_what_is_allowed(caught, "submit(queue=...)")
        assert (await db.list_runs()).runs == ()
        await db.close()

    asyncio.run(main())


@pytest.mark.parametrize(("name", "says"), REFUSED)
def test_an_agent_name_a_store_cannot_keep_is_refused(name: object, says: str) -> None:
    db = MemoryBackend()
    with pytest.raises(ConfigurationError) as caught:
        _agent(db, name)  # type: ignore[arg-type]
    assert says in str(caught.value)
    _says_what_is_allowed(caught, "Agent(name=...)")
    assert asyncio.run(db.list_runs()).runs == ()


@pytest.mark.parametrize(("name", "says"), REFUSED)
def test_a_worker_refuses_a_queue_name_a_store_cannot_keep(name: object, says: str) -> None:
    agent = _agent(MemoryBackend())
    with pytest.raises(ConfigurationError) as caught:
        Worker([agent], queues=["fine", name])  # type: ignore[list-item]
    assert says in str(caught.value)
    _says_what_is_allowed(caught, "Worker(queues=...)")
    with pytest.raises(ConfigurationError) as caught:
        Worker([agent], max_running={name: 1})  # type: ignore[dict-item]
    assert says in str(caught.value)
    _says_what_is_allowed(caught, "Worker(max_running=...)")


@pytest.mark.parametrize("field", ["session_id", "user_id"])
@pytest.mark.parametrize(
    "value", ["a\x00b", "a\x1fb", "line\n", "a\udce9", "", "s" * 501], ids=repr
)
def test_a_session_or_user_id_a_store_cannot_keep_is_refused_before_the_store_opens(
    tmp_path: Path, field: str, value: str
) -> None:
    path = tmp_path / "runs.db"
    with pytest.raises(ConfigurationError, match=f"SqliteBackend\\({field}="):
        SqliteBackend(path, **{field: value})  # type: ignore[arg-type]
    assert not path.exists()
    with pytest.raises(ConfigurationError, match=f"MemoryBackend\\({field}="):
        MemoryBackend(**{field: value})  # type: ignore[arg-type]


def test_a_session_id_as_long_as_allowed_is_stored_and_found(tmp_path: Path) -> None:
    async def main() -> None:
        session = "s" * 500
        async with SqliteBackend(tmp_path / "runs.db", session_id=session) as db:
            handle = await _agent(db).submit_async("x")
            (found,) = (await db.list_runs(session_id=session)).runs
            assert found.run_id == handle.run_id

    asyncio.run(main())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"host": "a\x1fb", "pid": 1}, "LeaseOwner(host=...): 'a\\x1fb' holds '\\x1f'"),
        ({"host": "", "pid": 1}, "LeaseOwner(host=...) must be a non-empty str"),
        ({"host": "h", "pid": 1, "nonce": "n:1"}, "holds ':' at position 1"),
        ({"host": "h", "pid": 1, "nonce": "n\x00"}, "holds '\\x00' at position 1"),
        ({"host": "h", "pid": -1}, "LeaseOwner(pid=...) must be an int >= 0"),
        ({"host": "h", "pid": True}, "LeaseOwner(pid=...) must be an int >= 0"),
    ],
)
def test_a_lease_owner_a_store_cannot_keep_is_refused(
    options: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LeaseOwner(**options)  # type: ignore[arg-type]
    assert says in str(caught.value)


def test_a_printable_queue_and_agent_name_of_any_script_is_submitted_and_claimed(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        agent = _agent(db, ACCEPTED)
        handle = await agent.submit_async("x", queue=ACCEPTED)
        worker = Worker([agent], queues=[ACCEPTED], max_running={ACCEPTED: 1})
        task = asyncio.create_task(worker.run(handle_signals=False))
        output = await handle.result(timeout=60)
        worker.stop()
        await asyncio.wait_for(task, 60)
        assert output.state is RunState.DONE
        header = await db.get_run(handle.run_id)
        assert (header.queue, header.agent_name) == (ACCEPTED, ACCEPTED)
        await db.close()

    asyncio.run(main())


def test_on_redis_cluster_braces_in_a_queue_or_agent_name_are_no_hash_tag(
    redis_cluster_url: str,
) -> None:
    """The cluster's keys name their slot with ``{...}``: a name's braces must not move them."""

    async def main() -> None:
        db = open_backend(f"{redis_cluster_url}?prefix=names-{uuid.uuid4().hex[:10]}:")
        agent = _agent(db, ACCEPTED)
        handle = await agent.submit_async("x", queue=ACCEPTED)
        worker = Worker([agent], queues=[ACCEPTED], max_running={ACCEPTED: 1})
        task = asyncio.create_task(worker.run(handle_signals=False))
        output = await handle.result(timeout=60)
        worker.stop()
        await asyncio.wait_for(task, 60)
        assert output.state is RunState.DONE
        await db.close()

    asyncio.run(main())


def test_a_run_stored_under_a_queue_name_now_refused_is_still_read_and_driven(
    durable_store: Callable[[], Backend],
) -> None:
    """A store written before the check may hold such a queue: it reads and claims as before."""

    async def main() -> None:
        db = durable_store()
        old = "old\x1fqueue"
        header = RunHeader(run_id="stored-before", agent_name="adder", seq=1, queue=old)
        created = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="x"),))
        await db.create_run(header, [created])
        assert (await db.get_run("stored-before")).queue == old
        assert [h.queue for h in (await db.list_runs()).runs] == [old]
        worker = Worker([_agent(db)])  # every queue

        async def done() -> bool:
            return (await db.get_run("stored-before")).state is RunState.DONE

        task = asyncio.create_task(worker.run(handle_signals=False))
        await wait_until_async(done, awaiting="the run stored under the old queue name DONE")
        worker.stop()
        await asyncio.wait_for(task, 60)
        stored = await db.load_run("stored-before")
        assert stored.header.queue == old
        await db.close()

    asyncio.run(main())


def test_a_run_stored_under_an_agent_name_now_refused_is_read_and_continued_by_id(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        old = "old\x1fagent"
        header = RunHeader(run_id="stored-before", agent_name=old, seq=1)
        created = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="x"),))
        await db.create_run(header, [created])
        assert [h.agent_name for h in (await db.list_runs()).runs] == [old]
        assert await _agent(db).continue_run_async("stored-before") == "done"
        stored = await db.load_run("stored-before")
        assert (stored.header.state, stored.header.agent_name) == (RunState.DONE, old)
        await db.close()

    asyncio.run(main())
