"""What only RedisBackend promises: keys of the wrong type isolated, Redis going away and
coming back mid-run, a pool that makes 1,000 runs wait instead of fail, retention, loops."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.backend import LeaseOwner
from durable_agent.errors import (
    ConfigurationError,
    CorruptRunError,
    DurableAgentError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.registry import open_backend
from tests._barriers import wait_until, wait_until_async
from tests.backends.conftest import created, header, new_run, run, step
from tests.backends.redis_server import RedisServer, skip_or_fail

redis = pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends.redis import RedisBackend  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with an fsynced append-only file, which a test may kill."""
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not on PATH (the fault tests kill and restart their own)")
    with RedisServer(tmp_path / "redis", appendonly=True) as started:
        yield started


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield backend
    run(backend.close())


async def _raw(backend: RedisBackend) -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(backend._url)


def _key(backend: RedisBackend, run_id: str, part: str) -> str:
    return f"{backend.prefix}{{{run_id}}}:{part}"


# -- keys of the wrong type --------------------------------------------------------------------


def test_a_header_key_of_the_wrong_type_fails_its_run_alone(store: RedisBackend) -> None:
    async def main() -> None:
        good = await new_run(store, "good")
        client = await _raw(store)
        async with client:
            await client.set(_key(store, "bad", "header"), "I am a string")
            await client.zadd(f"{store.prefix}idx:created", {"bad": 1.0})
        for call in (store.get_run, store.load_run):
            with pytest.raises(CorruptRunError, match=r"'bad'.*(string|hash)"):
                await call("bad")
        with pytest.raises(CorruptRunError, match="string"):
            await store.append("bad", [step(2)], expected_seq=1, lease=good)
        with pytest.raises(CorruptRunError, match="string"):
            await store.acquire_lease("bad", LeaseOwner.current(), ttl=30)
        with pytest.raises(CorruptRunError):
            await store.request_cancel("bad", "stop")
        await store.append("good", [step(2)], expected_seq=1, lease=good)
        assert [h.run_id for h in (await store.list_runs()).runs] == ["good"]
        assert await store.delete_run("bad") is True
        client = await _raw(store)
        async with client:
            assert await client.exists(_key(store, "bad", "header")) == 0

    run(main())


def test_an_events_key_of_the_wrong_type_refuses_the_append_and_writes_nothing(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        lease = await new_run(store, "r1")
        client = await _raw(store)
        async with client:
            await client.delete(_key(store, "r1", "events"))
            await client.hset(_key(store, "r1", "events"), "not", "a list")
        with pytest.raises(CorruptRunError, match="events key holds a hash"):
            await store.append("r1", [step(2)], expected_seq=1, lease=lease)
        with pytest.raises(CorruptRunError):
            await store.load_run("r1")
        stored = await store.get_run("r1")
        assert (stored.seq, stored.state) == (1, RunState.PENDING)

    run(main())


def test_a_missing_event_is_reported_and_the_append_refused(store: RedisBackend) -> None:
    async def main() -> None:
        lease = await new_run(store, "r1")
        lease = await store.append("r1", [step(2)], expected_seq=1, lease=lease)
        client = await _raw(store)
        async with client:
            await client.rpop(_key(store, "r1", "events"))
        with pytest.raises(CorruptRunError, match="does not match"):
            await store.load_run("r1")
        with pytest.raises(CorruptRunError, match="does not match"):
            await store.append("r1", [step(3)], expected_seq=2, lease=lease)

    run(main())



@pytest.mark.parametrize("lost", [1, 2], ids=["one event lost", "the whole log lost"])
def test_a_log_of_the_wrong_length_refuses_the_append_and_leaves_it_as_it_was(
    store: RedisBackend, lost: int
) -> None:
    # The script checks the log's length by RPUSH's reply, then takes its events
    # back out: the log must read as before the append, and the header unchanged.
    async def main() -> None:
        lease = await new_run(store, "r1")
        lease = await store.append("r1", [step(2)], expected_seq=1, lease=lease)
        client = await _raw(store)
        events = _key(store, "r1", "events")
        async with client:
            await client.rpop(events, lost)
            before = await client.lrange(events, 0, -1)
        with pytest.raises(CorruptRunError, match=f"does not match \\({2 - lost} 2\\)"):
            await store.append("r1", [step(3), step(4)], expected_seq=2, lease=lease)
        client = await _raw(store)
        async with client:
            assert await client.lrange(events, 0, -1) == before
            assert await client.exists(events) == (1 if before else 0)
        assert (await store.get_run("r1")).seq == 2

    run(main())

# -- Redis going away ---------------------------------------------------------------------------


def test_redis_going_away_raises_store_unavailable_and_the_store_works_once_back(
    server: RedisServer,
) -> None:
    store = RedisBackend(server.url, socket_timeout=2, connect_timeout=1)

    async def main() -> None:
        lease = await new_run(store, "r1")
        lease = await store.append("r1", [step(2)], expected_seq=1, lease=lease)
        server.kill()
        with pytest.raises(StoreUnavailableError, match="unavailable") as caught:
            await store.append("r1", [step(3)], expected_seq=2, lease=lease)
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(StoreUnavailableError):
            await store.load_run("r1")
        server.start()  # same port, same append-only file
        loaded = await store.load_run("r1")
        assert [e.seq for e in loaded.events] == [1, 2]
        await store.append("r1", [step(3)], expected_seq=2, lease=lease)
        assert (await store.get_run("r1")).seq == 3

    run(main())
    run(store.close())


def test_a_run_whose_redis_dies_mid_tool_call_resumes_once_redis_is_back(
    server: RedisServer,
) -> None:
    script: list[Any] = [
        ToolCall("lookup", {"city": "Oslo"}),
        ToolCall("lookup", {"city": "Rome"}),
        "Oslo and Rome are sunny",
    ]
    calls: list[str] = []

    async def lookup(city: str) -> str:
        """Look up the weather in a city."""
        calls.append(city)
        if city == "Rome" and calls.count("Rome") == 1:
            server.kill()  # Redis dies while the tool runs
        return f"sunny in {city}"

    def agent() -> Agent:
        store = RedisBackend(server.url, socket_timeout=2, connect_timeout=1)
        return Agent(ScriptedModel(script), db=store, tools=[lookup], retry=1, lease_ttl=0.5)

    first = agent()

    async def start() -> None:
        with pytest.raises(DurableAgentError) as caught:
            await first.do_async(Task("Weather in Oslo and Rome?", run_id="fault-run"))
        chain: list[BaseException] = []
        error: BaseException | None = caught.value
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
        assert any(isinstance(e, StoreUnavailableError) for e in chain), chain
        await first.db.close()

    run(start())
    server.start()
    at_restart = run(_load(server.url, "fault-run"))
    assert [e.seq for e in at_restart.events] == list(range(1, at_restart.header.seq + 1))
    # The first agent's process (ours) is alive, so its lease must lapse first.
    if (held := at_restart.header.lease) is not None:
        expires = held.expires_at
        wait_until(lambda: time.time() > expires, awaiting="the dead run's lease to lapse")
    second = agent()

    async def resume() -> str:
        answer = await second.continue_run_async(run_id="fault-run")
        await second.db.close()
        return str(answer)

    assert run(resume()) == "Oslo and Rome are sunny"
    final = run(_load(server.url, "fault-run"))
    assert final.header.state is RunState.DONE
    assert final.events[: len(at_restart.events)] == at_restart.events
    assert [e.seq for e in final.events] == list(range(1, final.header.seq + 1))
    assert calls.count("Oslo") == 1


async def _load(url: str, run_id: str) -> Any:
    async with RedisBackend(url) as store:
        return await store.load_run(run_id)


# -- scale, loops, retention ----------------------------------------------------------------------


def test_a_thousand_concurrent_runs_share_eight_connections_without_errors(redis_url: str) -> None:
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", max_connections=8)

    async def one(i: int) -> int:
        lease = await new_run(store, f"r{i}")
        for seq in range(2, 5):
            lease = await store.append(f"r{i}", [step(seq)], expected_seq=seq - 1, lease=lease)
        return (await store.get_run(f"r{i}")).seq

    async def main() -> None:
        seqs = await asyncio.gather(*(one(i) for i in range(1000)))
        assert set(seqs) == {4}
        pool = store._client().connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        assert 1 <= opened <= 8
        await store.close()

    run(main())


def test_one_backend_serves_successive_event_loops(redis_url: str) -> None:
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    lease = run(new_run(store, "r1"))
    lease = run(store.append("r1", [step(2)], expected_seq=1, lease=lease))
    run(store.append("r1", [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease))
    assert run(store.load_run("r1")).header.seq == 3
    run(store.close())
    with pytest.raises(StoreUnavailableError, match="closed"):
        run(store.get_run("r1"))


def test_a_call_after_its_loop_closed_the_connections_is_refused_not_leaked(
    redis_url: str,
) -> None:
    # The loop's shutdown closes its link (its async generator), after the tasks it
    # cancelled have finished; a call later still must not open a pool no one closes.
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:")

    async def main() -> None:
        await new_run(store, "r1")
        link = store._conn.current
        assert link is not None
        await link.closer.aclose()  # what the loop's shutdown_asyncgens() does
        with pytest.raises(StoreUnavailableError, match="event loop is shutting down"):
            await store.get_run("r1")
        assert store._conn.current is link
        await store.close()

    run(main())


def test_retention_expires_finished_runs_and_their_index_entries(redis_url: str) -> None:
    # Two stores: one whose retention no loaded machine outlasts, to read the TTL a
    # finished run gets while its key surely still exists; one short, to see it expire.
    kept = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", retention=60)
    store = RedisBackend(redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:", retention=0.2)

    async def main() -> None:
        lease = await new_run(kept, "done")
        await new_run(kept, "running")
        await kept.append("done", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
        client = await _raw(kept)
        async with client:
            assert 0 < await client.pttl(_key(kept, "done", "header")) <= 60_000
            assert await client.pttl(_key(kept, "running", "header")) == -1
        await kept.close()

        lease = await new_run(store, "done", session_id="s")
        await new_run(store, "running", session_id="s")
        await store.append("done", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
        client = await _raw(store)
        async with client:
            assert await client.pttl(_key(store, "running", "header")) == -1

            async def expired() -> bool:
                return not await client.exists(_key(store, "done", "header"))

            await wait_until_async(expired, awaiting="the finished run's key to expire (0.2 s)")
        with pytest.raises(RunNotFoundError):
            await store.get_run("done")
        assert [h.run_id for h in (await store.list_runs(session_id="s")).runs] == ["running"]
        assert (await store.list_runs(states=[RunState.DONE])).runs == ()
        client = await _raw(store)
        async with client:
            assert await client.zscore(f"{store.prefix}idx:session:s", "done") is None
        await store.close()

    run(main())


def test_a_created_run_is_one_hash_and_one_list_under_one_hash_tag(store: RedisBackend) -> None:
    async def main() -> None:
        await store.create_run(header("r1", session_id="s", user_id="u"), [created()])
        from durable_agent.backends import _redis_workers

        await _redis_workers.flush(store)  # the wake-up is announced on its own task
        client = await _raw(store)
        async with client:
            keys = sorted([k.decode() async for k in client.scan_iter(match=f"{store.prefix}*")])
            fields = await client.hgetall(_key(store, "r1", "header"))
        assert keys == sorted(
            [
                _key(store, "r1", "header"),
                _key(store, "r1", "events"),
                f"{store.prefix}idx:created",
                f"{store.prefix}idx:state:PENDING",
                f"{store.prefix}idx:session:s",
                f"{store.prefix}idx:user:u",
                f"{store.prefix}{{changes}}",  # the wake-up stream: a run no one holds yet
                # The claim indexes (`_redis_claims`): the run is ready to claim.
                f"{store.prefix}claim:ready:default\x1fagent",
                f"{store.prefix}claim:queues",
                f"{store.prefix}claim:agents:default",
            ]
        )
        assert fields[b"ix"] == f"{store.prefix}claim:ready:default\x1fagent".encode()
        assert fields[b"state"] == b"PENDING"
        assert fields[b"seq"] == b"1"

    run(main())


# -- URLs and options -----------------------------------------------------------------------------


def test_redis_urls_carry_password_database_and_tls_to_the_pool() -> None:
    async def main() -> None:
        plain = open_backend("redis://:s3cret@127.0.0.1:6390/3?prefix=app:&retention=60")
        assert isinstance(plain, RedisBackend)
        assert (plain.prefix, plain._retention_ms) == ("app:", "60000")
        kwargs = plain._client().connection_pool.connection_kwargs
        assert (kwargs["password"], kwargs["db"], kwargs["port"]) == ("s3cret", 3, 6390)
        assert "s3cret" not in repr(plain)
        tls = open_backend("rediss://user:pw@127.0.0.1:6391/0")
        assert type(tls._client().connection_pool).__name__ == "BlockingConnectionPool"  # type: ignore[attr-defined]
        pool = tls._client().connection_pool  # type: ignore[attr-defined]
        assert pool.connection_class.__name__ == "SSLConnection"
        await plain.close()
        await tls.close()

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "http://localhost"}, "redis://"),
        ({"prefix": "a{b}"}, "prefix"),
        ({"retention": 0}, "retention"),
        ({"max_connections": 0}, "max_connections"),
        ({"pool_timeout": -1}, "pool_timeout"),
    ],
)
def test_bad_options_raise_configuration_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisBackend(**kwargs)
