"""The listing indexes of RedisBackend on a Redis Cluster: exact after many concurrent runs,
updates a dead writer left finished by the next listing, stale entries mended, late updates
that never undo newer ones, retention, delete, prune and repair.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta
from typing import Any

import pytest

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader, utcnow
from tests._barriers import wait_until_async
from tests.backends.conftest import created, header, new_run, run, step
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)

redis = pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends import _redis_cluster as clx  # noqa: E402
from durable_agent.backends import _redis_cluster_scripts as cl  # noqa: E402
from durable_agent.backends.redis import RedisBackend  # noqa: E402
from tests.backends.cluster_store import (  # noqa: E402
    cluster_store,  # noqa: F401  (the fixture `store`)
    forget,
    key_of,
    raw_client,
)

# -- listings after many concurrent runs -----------------------------------------------------


async def _drive(store: RedisBackend, run_id: str, i: int) -> None:
    """Run ``run_id`` through a path chosen by ``i``: some rest, some resume, some stay."""
    lease = await store.acquire_lease(run_id, LeaseOwner.current(), ttl=30)
    seq = 1
    path = [RunState.MODEL_CALL, RunState.TOOL_EXEC, RunState.MODEL_CALL]
    path += [
        [RunState.DONE],
        [RunState.WAITING],
        [RunState.ERROR],
        [RunState.CANCELLED],
        [],  # still running
        [RunState.WAITING, RunState.MODEL_CALL, RunState.DONE],  # resumed after a decision
    ][i % 6]
    for state in path:
        seq += 1
        await asyncio.sleep(random.random() * 0.002)
        lease = await store.append(run_id, [step(seq, state)], expected_seq=seq - 1, lease=lease)


def test_listing_by_state_session_and_user_is_exact_after_many_concurrent_runs(
    store: RedisBackend,
) -> None:
    count = 300

    async def main() -> None:
        ids = [f"r{i:03d}" for i in range(count)]
        await asyncio.gather(
            *(
                store.create_run(
                    header(run_id, session_id=f"s{i % 4}", user_id=f"u{i % 5}" if i % 7 else None),
                    [created()],
                )
                for i, run_id in enumerate(ids)
            )
        )
        await asyncio.gather(*(_drive(store, run_id, i) for i, run_id in enumerate(ids)))
        truth = {h.run_id: h for h in await asyncio.gather(*map(store.get_run, ids))}
        other = RedisBackend(store._url, prefix=store.prefix)  # as another process lists
        try:
            await _check_listings(other, truth)
        finally:
            await other.close()
        # The indexes hold exactly the runs' current buckets: nothing stale to mend.
        async with raw_client(store._url) as client:
            for name in ("ACTIVE", "WAITING", "DONE", "ERROR", "CANCELLED"):
                key = f"{store.prefix}{{idx}}:state:{name}"
                members = {m.decode() for m in await client.zrange(key, 0, -1)}
                assert members == {r for r, h in truth.items() if clx.bucket(h.state) == name}
            assert await client.hlen(f"{store.prefix}{{idx}}:pending") == 0

    run(main())


async def _all(store: Backend, **filters: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_runs(limit=37, cursor=cursor, **filters)
        seen.extend(h.run_id for h in page.runs)
        if (cursor := page.next_cursor) is None:
            return seen


async def _check_listings(store: Backend, truth: dict[str, RunHeader]) -> None:
    newest_first = sorted(truth.values(), key=lambda h: (h.created_at, h.run_id), reverse=True)

    def expect(keep: Any) -> list[str]:
        return [h.run_id for h in newest_first if keep(h)]

    assert await _all(store) == expect(lambda h: True)
    for state in RunState:
        listed = await _all(store, states=[state])
        assert listed == expect(lambda h, s=state: h.state is s), state
    rest = [RunState.WAITING, RunState.DONE]
    assert await _all(store, states=rest) == expect(lambda h: h.state in rest)
    for session in ("s0", "s1", "s2", "s3"):
        assert await _all(store, session_id=session) == expect(
            lambda h, s=session: h.session_id == s
        )
        listed = await _all(store, session_id=session, states=[RunState.DONE])
        assert listed == expect(lambda h, s=session: h.session_id == s and h.state is RunState.DONE)
    for user in ("u1", "u2", "u3", "u4"):
        assert await _all(store, user_id=user) == expect(lambda h, u=user: h.user_id == u)


def test_a_thousand_runs_through_the_engine_on_a_cluster_all_finish_and_list(
    redis_cluster_url: str,  # noqa: F811
) -> None:
    prefix = f"eng-{uuid.uuid4().hex[:8]}:"

    async def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    script: list[Any] = [ToolCall("weather", {"city": "Oslo"}), "sunny"]

    async def main() -> None:
        store = RedisBackend(
            redis_cluster_url, prefix=prefix, session_id="eng", user_id="e", max_connections=8
        )
        agent = Agent(ScriptedModel(script), db=store, tools=[weather], retry=1)
        outcomes = await asyncio.gather(
            *(agent.do_async(Task("weather?", run_id=f"run-{i}")) for i in range(1000)),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert not errors, errors[:3]
        done = await _all(store, session_id="eng", states=[RunState.DONE])
        assert sorted(done) == sorted(f"run-{i}" for i in range(1000))
        assert await _all(store, states=[RunState.MODEL_CALL, RunState.PENDING]) == []
        link = store._connect()
        assert link.gate is not None
        nodes = link.client.get_nodes()  # type: ignore[union-attr]
        assert max(len(node._connections) for node in nodes) <= 8
        await store.close()
        await forget(redis_cluster_url, prefix)

    run(main())


# -- a writer that dies between its script and its index update -------------------------------


def test_a_writer_dead_between_its_write_and_the_index_update_is_finished_by_a_listing(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def died(*args: Any, **kwargs: Any) -> None:
        """As if the process was killed right after the run's own script returned."""

    async def main() -> None:
        lease = await new_run(store, "finished", session_id="s", user_id="u")
        await new_run(store, "other", session_id="s")
        assert store._indexes is not None
        with monkeypatch.context() as patch:
            patch.setattr(store._indexes, "index", died)
            await store.create_run(header("born", session_id="s", user_id="u"), [created()])
            await store.append(
                "finished", [step(2, RunState.DONE)], expected_seq=1, lease=lease, release=True
            )
        async with raw_client(store._url) as client:
            # Nothing indexed the two writes; their intents are recorded.
            assert await client.zscore(f"{store.prefix}{{idx}}:created", "born") is None
            assert await client.hlen(f"{store.prefix}{{idx}}:pending") == 2
        other = RedisBackend(store._url, prefix=store.prefix)
        try:
            done = await other.list_runs(states=[RunState.DONE])
            assert [h.run_id for h in done.runs] == ["finished"]
            assert (await other.list_runs(states=[RunState.PENDING])).runs[0].run_id == "born"
            listed = await _all(other, user_id="u")
            assert listed == ["born", "finished"]
            assert sorted(await _all(other, session_id="s")) == ["born", "finished", "other"]
        finally:
            await other.close()
        async with raw_client(store._url) as client:
            assert await client.hlen(f"{store.prefix}{{idx}}:pending") == 0
            active = f"{store.prefix}{{idx}}:state:ACTIVE"
            assert await client.zscore(active, "finished") is None

    run(main())


def test_a_resume_from_rest_records_its_intent_when_the_script_asks_for_it(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        lease = await new_run(store, "r1")
        lease = await store.append("r1", [step(2, RunState.WAITING)], expected_seq=1, lease=lease)
        assert [h.run_id for h in (await store.list_runs(states=[RunState.WAITING])).runs] == ["r1"]
        # Leaving WAITING is not told by the event; the script refuses, then it goes through.
        lease = await store.append("r1", [step(3)], expected_seq=2, lease=lease)
        assert (await store.list_runs(states=[RunState.WAITING])).runs == ()
        assert [h.run_id for h in (await store.list_runs(states=[RunState.MODEL_CALL])).runs] == [
            "r1"
        ]
        assert (await store.get_run("r1")).seq == 3

    run(main())


# -- stale entries, late updates, retention ---------------------------------------------------


def test_stale_entries_are_mended_and_a_late_index_update_never_undoes_a_newer_one(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        lease = await new_run(store, "r1", session_id="s")
        await store.append("r1", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
        ix = store._indexes
        assert ix is not None
        # An update of seq 1 (PENDING) arrives late, after the one of seq 2 (DONE).
        (raw,) = await store._read_headers(["r1"])
        late = RunHeader.model_validate({**(await store.get_run("r1")).model_dump(), "seq": 1})
        late = late.model_copy(update={"state": RunState.PENDING})
        applied = await store._eval(
            cl.INDEX, [ix.runs, ix.pending], [ix.base, ix.truth(late, raw[b"incarnation"])]
        )
        assert applied == 0
        assert [h.run_id for h in (await store.list_runs(states=[RunState.DONE])).runs] == ["r1"]
        # Entries that disagree with the header: a wrong bucket, a run that is gone.
        async with raw_client(store._url) as client:
            await client.zadd(ix.state("WAITING"), {"r1": 1.0, "ghost": 2.0})
            await client.zadd(ix.session("s"), {"ghost": 3.0})
        assert (await store.list_runs(states=[RunState.WAITING])).runs == ()
        assert [h.run_id for h in (await store.list_runs(session_id="s")).runs] == ["r1"]
        async with raw_client(store._url) as client:
            assert await client.zcard(ix.state("WAITING")) == 0
            assert await client.zrange(ix.session("s"), 0, -1) == [b"r1"]
            assert await client.zrange(ix.state("DONE"), 0, -1) == [b"r1"]

    run(main())


def test_an_intent_whose_write_never_happened_expires(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        await new_run(store, "r1")
        ix = store._indexes
        assert ix is not None
        await ix.intent("r1", 7)  # announced; the writer died before its script
        await ix.intent("never-created", 1, new=True)
        await store.list_runs()
        async with raw_client(store._url) as client:
            assert await client.hlen(ix.pending) == 2  # young: a writer may be on its way
        monkeypatch.setattr(clx, "INTENT_AGE", 0.0)
        assert [h.run_id for h in (await store.list_runs()).runs] == ["r1"]
        async with raw_client(store._url) as client:
            assert await client.hlen(ix.pending) == 0

    run(main())


def test_a_transition_is_one_round_trip_and_a_bucket_change_three(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = store._eval

    async def counted(script: cl.Script, keys: Any, args: Any) -> Any:
        calls.append(script.name)
        return await real(script, keys, args)

    monkeypatch.setattr(store, "_eval", counted)

    async def main() -> None:
        await store.create_run(header("r1"), [created()])
        assert calls == ["cluster_intent", "cluster_create", "cluster_index"]
        lease = await store.acquire_lease("r1", LeaseOwner.current(), ttl=30)
        calls.clear()
        for seq, state in enumerate([RunState.MODEL_CALL, RunState.TOOL_EXEC], start=2):
            lease = await store.append("r1", [step(seq, state)], expected_seq=seq - 1, lease=lease)
        assert calls == ["cluster_append", "cluster_append"]  # within ACTIVE: one script
        calls.clear()
        lease = await store.append("r1", [step(4, RunState.WAITING)], expected_seq=3, lease=lease)
        assert calls == ["cluster_intent", "cluster_append", "cluster_index"]
        calls.clear()
        await store.append("r1", [step(5)], expected_seq=4, lease=lease)
        # Leaving rest: the script asks for the intent first.
        assert calls == ["cluster_append", "cluster_intent", "cluster_append", "cluster_index"]

    run(main())


def test_retention_expires_finished_runs_and_listings_drop_their_entries(
    redis_cluster_url: str,  # noqa: F811
) -> None:
    prefix, kept_prefix = f"t-{uuid.uuid4().hex[:8]}:", f"t-{uuid.uuid4().hex[:8]}:"
    # Two stores: one whose retention no loaded machine outlasts, to read the TTL a
    # finished run gets while its key surely still exists; one short, to see it expire.
    kept = RedisBackend(redis_cluster_url, prefix=kept_prefix, retention=60)
    store = RedisBackend(redis_cluster_url, prefix=prefix, retention=0.2)

    async def main() -> None:
        lease = await new_run(kept, "done")
        await kept.append("done", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
        async with raw_client(redis_cluster_url) as client:
            assert 0 < await client.pttl(key_of(kept, "done", "header")) <= 60_000
        await kept.close()
        await forget(redis_cluster_url, kept_prefix)

        lease = await new_run(store, "done", session_id="s")
        await new_run(store, "running", session_id="s")
        await store.append("done", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
        async with raw_client(redis_cluster_url) as client:

            async def expired() -> bool:
                return not await client.exists(key_of(store, "done", "header"))

            await wait_until_async(expired, awaiting="the finished run's key to expire (0.2 s)")
        with pytest.raises(RunNotFoundError):
            await store.get_run("done")
        assert [h.run_id for h in (await store.list_runs(session_id="s")).runs] == ["running"]
        assert (await store.list_runs(states=[RunState.DONE])).runs == ()
        assert [h.run_id for h in (await store.list_runs()).runs] == ["running"]
        async with raw_client(redis_cluster_url) as client:
            assert await client.hexists(f"{prefix}{{idx}}:runs", "done") == 0
            assert await client.zscore(f"{prefix}{{idx}}:session:s", "done") is None
        await store.close()
        await forget(redis_cluster_url, prefix)

    run(main())


def test_delete_and_prune_remove_index_entries_and_repair_rebuilds_lost_ones(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        for i in range(5):
            lease = await new_run(store, f"r{i}", session_id="s", user_id="u")
            await store.append(
                f"r{i}", [step(2, RunState.DONE)], expected_seq=1, lease=lease, release=True
            )
        ix = store._indexes
        assert ix is not None
        assert await store.delete_run("r0") is True
        assert await store.prune(older_than=utcnow() + timedelta(days=1)) == 4
        async with raw_client(store._url) as client:
            for key in (ix.created, ix.state("DONE"), ix.session("s"), ix.user("u"), ix.runs):
                assert await client.exists(key) == 0, key
        # A failover that lost the index slot's writes: repair_indexes rebuilds them.
        await new_run(store, "kept", session_id="s")
        async with raw_client(store._url) as client:
            await client.delete(ix.created, ix.state("ACTIVE"), ix.session("s"), ix.runs)
        assert (await store.list_runs()).runs == ()
        assert await store.repair_indexes() == 1
        assert [h.run_id for h in (await store.list_runs(session_id="s")).runs] == ["kept"]
        assert [h.run_id for h in (await store.list_runs(states=[RunState.PENDING])).runs] == [
            "kept"
        ]

    run(main())
