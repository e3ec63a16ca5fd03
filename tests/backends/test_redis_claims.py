"""RedisBackend's native claim: the expiry index, the claim indexes kept by every write,
the once-only backfill of an older store, and the URL's password kept secret."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from durable_agent._redact import redact
from durable_agent.backend import Capability, LeaseOwner
from durable_agent.errors import StoreUnavailableError
from durable_agent.fsm import RunState
from tests._barriers import DEADLINE
from tests.backends.conftest import created, header, run, step

redis = pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends.redis import RedisBackend  # noqa: E402
from tests.backends.redis_raw import raw_client  # noqa: E402


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend(redis_url, prefix=f"c-{uuid.uuid4().hex[:8]}:")
    yield backend
    run(backend.close())


def _leased(backend: RedisBackend, queue: str = "default", agent: str = "agent") -> str:
    return f"{backend.prefix}claim:leased:{queue}\x1f{agent}"


def _ready(backend: RedisBackend, queue: str = "default", agent: str = "agent") -> str:
    return f"{backend.prefix}claim:ready:{queue}\x1f{agent}"


def test_a_single_redis_claims_natively_and_a_cluster_caps_queues_without_saying_claim() -> None:
    assert {Capability.CLAIM, Capability.QUEUE_LIMIT} <= RedisBackend.capabilities
    cluster = RedisBackend("redis+cluster://127.0.0.1:7000")
    assert Capability.CLAIM not in cluster.capabilities
    assert Capability.QUEUE_LIMIT in cluster.capabilities  # queue places (_redis_cluster_places)
    assert Capability.WORKER_LIVENESS in cluster.capabilities


def test_the_expiry_index_follows_every_renewal_and_finds_an_expired_lease_without_listing(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        await store.create_run(header("r1", state=RunState.MODEL_CALL, seq=2),
                               [created(), step(2)])
        owner = LeaseOwner.current()
        lease = await store.acquire_lease("r1", owner, ttl=30)
        async with raw_client(store._url) as client:
            assert await client.zscore(_leased(store), "r1") == pytest.approx(lease.expires_at)
            assert await client.zcard(_ready(store)) == 0
            lease = await store.append("r1", [step(3)], expected_seq=2, lease=lease)
            assert await client.zscore(_leased(store), "r1") == pytest.approx(lease.expires_at)
            short = lease.model_copy(update={"ttl": 0.05})
            lease = await store.renew_lease("r1", short)
            assert await client.zscore(_leased(store), "r1") == pytest.approx(lease.expires_at)
            # The listing's state indexes gone: a claim that listed would find nothing.
            for state in RunState:
                await client.delete(f"{store.prefix}idx:state:{state.value}")
            other = LeaseOwner.current()
            got = await store.claim_runs(other, agents=["agent"])
            while not got:  # the lease lapses 0.05 s after the renewal, by Redis's clock
                assert time.time() < lease.expires_at + 30
                got = await store.claim_runs(other, agents=["agent"])
            (claim,) = got
            assert claim.takeover
            assert claim.previous is not None
            assert claim.previous.owner == owner.id
            assert claim.lease.generation == lease.generation + 1
            assert await client.zscore(_leased(store), "r1") == pytest.approx(
                claim.lease.expires_at
            )
            assert await client.smembers(f"{store.prefix}claim:owner:{other.id}") == {b"r1"}
            assert await client.smembers(f"{store.prefix}claim:owner:{owner.id}") == set()

    run(main())


def test_a_run_at_rest_or_deleted_leaves_no_claim_index_entry(store: RedisBackend) -> None:
    async def main() -> None:
        for run_id in ("done", "gone", "later"):
            await store.create_run(header(run_id), [created()])
        (first,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
        finished = step(2, RunState.DONE)
        await store.append(first.run_id, [finished], expected_seq=1, lease=first.lease,
                           release=True)
        (second,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
        await store.release_lease(second.run_id, second.lease)
        async with raw_client(store._url) as client:
            assert await client.zcard(_ready(store)) == 2  # released: ready again
            assert await client.zcard(_leased(store)) == 0
            assert await store.delete_run(second.run_id)
            assert await client.zcard(_ready(store)) == 1
            assert b"ix" not in await client.hgetall(
                f"{store.prefix}{{{first.run_id}}}:header"
            )

    run(main())


def test_a_store_written_before_the_claim_indexes_is_indexed_by_the_first_claim(
    redis_url: str,
) -> None:
    async def main() -> None:
        prefix = f"old-{uuid.uuid4().hex[:8]}:"
        async with RedisBackend(redis_url, prefix=prefix) as writer:
            for i in range(3):
                await writer.create_run(header(f"r{i}", priority=i), [created()])
            # The layout of the version before: no claim keys, no 'ix'.
            async with raw_client(writer._url) as client:
                async for key in client.scan_iter(match=f"{prefix}claim:*"):
                    await client.delete(key)
                for i in range(3):
                    await client.hdel(f"{prefix}{{r{i}}}:header", "ix", "ixo")
        async with RedisBackend(redis_url, prefix=prefix) as reader:
            got = await reader.claim_runs(LeaseOwner.current(), agents=["agent"], limit=5)
            assert [c.run_id for c in got] == ["r2", "r1", "r0"]  # highest priority first

    run(main())


def test_the_urls_password_is_secret_and_hidden_in_reprs_and_errors() -> None:
    async def main() -> None:
        secret = f"pw-{uuid.uuid4().hex}"
        store = RedisBackend(f"redis://user:{secret}@127.0.0.1:1/0", connect_timeout=0.5)
        assert secret not in repr(store)
        assert secret not in redact(f"the server said: auth {secret} refused")
        with pytest.raises(StoreUnavailableError) as caught:
            await store.get_run("r1")
        assert secret not in str(caught.value)
        await store.close()
        query = f"q-{uuid.uuid4().hex}"
        other = RedisBackend(f"redis://127.0.0.1:1/0?password={query}")
        assert query not in repr(other)
        assert query not in redact(f"password={query}")

    run(main())


def test_a_lease_of_a_process_gone_from_this_host_is_taken_over_at_once(
    store: RedisBackend,
) -> None:
    run(store.create_run(header("r1", state=RunState.MODEL_CALL, seq=2), [created(), step(2)]))
    child = (
        "import asyncio, sys\n"
        "from durable_agent.backend import LeaseOwner\n"
        "from durable_agent.backends.redis import RedisBackend\n"
        "async def main():\n"
        "    async with RedisBackend(sys.argv[1], prefix=sys.argv[2]) as b:\n"
        "        await b.acquire_lease('r1', LeaseOwner.current(), ttl=300)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, store._url, store.prefix],
        capture_output=True, text=True, timeout=DEADLINE, check=False,
    )
    assert done.returncode == 0, done.stderr

    async def main() -> None:
        held = (await store.get_run("r1")).lease
        assert held is not None
        assert held.expires_at > time.time() + 200
        (claim,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
        assert claim.takeover  # its owner's pid is gone: no waiting out the 300 s
        assert claim.previous is not None
        assert claim.previous.owner == held.owner

    run(main())
