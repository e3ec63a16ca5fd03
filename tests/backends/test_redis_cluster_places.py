"""Queue places on a real Redis Cluster of three masters (`_redis_cluster_places`).

What the conformance suite cannot see from outside: every lease holds a place
(leases taken outside claims count toward a cap too), a place taken by a
claimer that died before acquiring only fills the queue, a lease never
outlives its place, places are extended by writes and dropped by releases and
deletes, and a write whose place lapsed is refused before it writes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from durable_agent.backend import LeaseOwner
from durable_agent.errors import LeaseLostError
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests._barriers import DEADLINE
from tests.backends.conftest import created, header, run, step
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)

pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends import _redis_cluster_places as places
from durable_agent.backends.redis import RedisBackend
from tests.backends.cluster_store import (
    cluster_store,  # noqa: F401  (the fixture `store`)
    raw_client,
)

CAP = {"q": 1}


async def _submit(store: RedisBackend, *run_ids: str) -> None:
    for run_id in run_ids:
        await store.create_run(header(run_id, queue="q"), [created()])


async def _live_places(store: RedisBackend, queue: str = "q") -> list[str]:
    async with raw_client(store._url) as client:
        found = await client.zrangebyscore(places._key(store, queue), f"({time.time()}", "+inf")
    return sorted(m.decode() for m in found)


async def _field(store: RedisBackend, run_id: str, name: str) -> str | None:
    async with raw_client(store._url) as client:
        value = await client.hget(store._keys(run_id)[0], name)
    return None if value is None else value.decode()


async def _claim(store: RedisBackend) -> list[str]:
    got = await store.claim_runs(LeaseOwner.current(), agents=["agent"], limit=5, max_running=CAP)
    return [c.run_id for c in got]


def test_a_lease_acquired_outside_claims_fills_its_queue_until_released(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        lease = await store.acquire_lease("a", LeaseOwner.current(), ttl=30)  # continue_run_async
        assert await _live_places(store) == ["a"]
        assert await _claim(store) == []
        await store.release_lease("a", lease)
        assert await _live_places(store) == []
        assert await _claim(store) == ["a"]  # oldest first, now that there is room

    run(main())


def test_a_run_created_with_its_lease_counts_as_do_async_runs_do(store: RedisBackend) -> None:
    async def main() -> None:
        owner = LeaseOwner.current()
        lease = Lease(owner=owner.id, host=owner.host, pid=owner.pid, generation=1,
                      expires_at=time.time() + 30, ttl=30)
        leased = header("a", queue="q", state=RunState.MODEL_CALL, lease=lease,
                        lease_generation=1)
        await store.create_run(leased, [created()])
        await _submit(store, "b")
        assert await _live_places(store) == ["a"]
        assert await _claim(store) == []
        done = step(2, RunState.DONE)
        await store.append("a", [done], expected_seq=1, lease=lease, release=True)
        assert await _live_places(store) == []
        assert await _claim(store) == ["b"]

    run(main())


def test_a_claimer_dead_between_its_place_and_its_lease_only_fills_the_queue(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        # Step 1 of a claim of "a", and no step 2: the claimer died in between.
        assert await places.take(store, "q", "a", 1, 30.0) is not None
        assert await _claim(store) == []  # full: never over the cap
        assert (await store.get_run("a")).lease is None
        unlimited = await store.claim_runs(LeaseOwner.current(), agents=["agent"], limit=5)
        # Without a cap "b" is claimed; "a" looks claimed by the dead claimer for a while
        # (`places.claim_window`).
        assert [c.run_id for c in unlimited] == ["b"]
        assert await _live_places(store) == ["a", "b"]

    run(main())


def test_a_dead_claimers_place_keeps_others_off_its_run_no_longer_than_the_lease_ttl(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        # Two claimers died between taking their places and acquiring the leases,
        # 5 s ago: inside the 10 s window, but past a 2 s lease TTL.
        for run_id in ("a", "b"):
            assert await places.take(store, "q", run_id, 1, 30.0) is not None
        async with raw_client(store._url) as client:
            taken = f"{store.prefix}{{idx}}:placed:q"
            for run_id in ("a", "b"):
                gen, token, _ = (await client.hget(taken, run_id)).decode().split("|")
                await client.hset(taken, run_id, f"{gen}|{token}|{time.time() - 5:.6f}")
        owner = LeaseOwner.current()
        assert await store.claim_runs(owner, agents=["agent"], limit=5, ttl=30) == []
        claimed = await store.claim_runs(owner, agents=["agent"], limit=5, ttl=2)
        assert sorted(c.run_id for c in claimed) == ["a", "b"]
        assert await _live_places(store) == ["a", "b"]  # the same places, taken over

    run(main())


def test_a_lease_never_outlives_its_place_and_a_write_extends_a_place_running_short(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await _submit(store, "a")
        (claim,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"], ttl=30)
        until = float(await _field(store, "a", "place_until") or 0)
        assert claim.lease.expires_at <= until
        async with raw_client(store._url) as client:
            score = await client.zscore(places._key(store, "q"), "a")
        assert until + places.SKEW <= score  # the place outlives the lease
        short = f"{time.time() + 5:.6f}"  # as if the place had been taken long ago
        async with raw_client(store._url) as client:
            await client.hset(store._keys("a")[0], "place_until", short)
        lease = await store.append("a", [step(2)], expected_seq=1, lease=claim.lease)
        assert lease.expires_at <= float(short)  # capped at the place it had
        extended = float(await _field(store, "a", "place_until") or 0)
        assert extended > float(short) + 30  # and the place was extended for the next ones
        lease = await store.renew_lease("a", lease)
        assert lease.expires_at > float(short)

    run(main())


def test_a_write_whose_place_lapsed_is_refused_before_it_writes(store: RedisBackend) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        (claim,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"], ttl=30)
        past = f"{time.time() - 1:.6f}"
        async with raw_client(store._url) as client:
            await client.hset(store._keys("a")[0], "place_until", past)
        # The place itself is still live: the writer extends it and goes on.
        lease = await store.append("a", [step(2)], expected_seq=1, lease=claim.lease)
        assert float(await _field(store, "a", "place_until") or 0) > time.time() + 30
        # Now the place is gone too (expired, and another run took the room).
        async with raw_client(store._url) as client:
            await client.hset(store._keys("a")[0], "place_until", past)
            await client.zrem(places._key(store, "q"), "a")
        assert await _claim(store) == ["b"]
        with pytest.raises(LeaseLostError, match="place"):
            await store.append("a", [step(3)], expected_seq=2, lease=lease)
        with pytest.raises(LeaseLostError, match="place"):
            await store.renew_lease("a", lease)
        assert (await store.get_run("a")).seq == 2

    run(main())


def test_deleting_a_leased_run_gives_its_place_back(store: RedisBackend) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        assert await _claim(store) == ["a"]
        assert await store.delete_run("a")
        assert await _live_places(store) == []
        assert await _claim(store) == ["b"]

    run(main())


def test_a_takeover_keeps_the_one_place_and_the_old_release_does_not_drop_it(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        (first,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"],
                                          max_running=CAP)
        await store.renew_lease("a", first.lease.model_copy(update={"ttl": 0.05}))
        got: list[str] = []
        end = time.monotonic() + DEADLINE
        while not got and time.monotonic() < end:  # the short lease expires by the store's clock
            got = await _claim(store)
            await asyncio.sleep(0.01)
        assert got == ["a"]
        assert await _live_places(store) == ["a"]
        await store.release_lease("a", first.lease)  # a stale holder: refused, drops nothing
        assert await _live_places(store) == ["a"]
        assert await _claim(store) == []

    run(main())


def test_a_run_created_leased_and_brought_to_rest_pays_no_round_trip_for_its_place(
    store: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = store._eval

    async def counted(script: Any, keys: Any, args: Any) -> Any:
        calls.append(script.name)
        return await real(script, keys, args)

    monkeypatch.setattr(store, "_eval", counted)

    async def main() -> None:
        owner = LeaseOwner.current()
        lease = Lease(owner=owner.id, host=owner.host, pid=owner.pid, generation=1,
                      expires_at=time.time() + 30, ttl=30)
        leased = header("a", queue="q", state=RunState.MODEL_CALL, lease=lease,
                        lease_generation=1)
        await store.create_run(leased, [created()])
        assert calls == ["cluster_intent_take", "cluster_create", "cluster_index"]
        assert await _live_places(store) == ["a"]
        calls.clear()
        lease = await store.append("a", [step(2, RunState.TOOL_EXEC)], expected_seq=1,
                                   lease=lease)
        assert calls == ["cluster_append"]
        calls.clear()
        done = step(3, RunState.DONE)
        await store.append("a", [done], expected_seq=2, lease=lease, release=True)
        assert calls == ["cluster_intent", "cluster_append", "cluster_index_drop"]
        assert await _live_places(store) == []

    run(main())


def test_a_queue_past_a_lowered_cap_gets_no_takeover_either(store: RedisBackend) -> None:
    async def main() -> None:
        await _submit(store, "a", "b")
        owner = LeaseOwner.current()
        held = await store.claim_runs(owner, agents=["agent"], limit=2, max_running={"q": 2})
        for claim in held:  # both holders go quiet: their leases lapse, their places stay
            await store.renew_lease(claim.run_id, claim.lease.model_copy(update={"ttl": 0.05}))
        end = time.monotonic() + DEADLINE
        while (await store.get_run("b")).lease.expires_at > time.time():  # type: ignore[union-attr]
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        assert await _claim(store) == []  # two live places, cap now 1: nothing taken over
        got = await store.claim_runs(owner, agents=["agent"], limit=5, max_running={"q": 2})
        assert sorted(c.run_id for c in got) == ["a", "b"]  # each keeps its own place

    run(main())
