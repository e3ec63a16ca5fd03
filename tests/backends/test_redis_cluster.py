"""RedisBackend on a real Redis Cluster of three masters: the whole conformance suite, runs
spread over the masters, URLs and options, two processes racing on one run.

The listing indexes on a cluster are `tests/backends/test_redis_cluster_indexes.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durable_agent.backend import Backend
from durable_agent.errors import ConfigurationError, StoreUnavailableError
from durable_agent.records import SCHEMA_VERSION, TransitionEvent
from durable_agent.registry import open_backend
from durable_agent.testing.conformance import BackendConformance
from tests.backends.conftest import created, header, new_run, run
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)
from tests.backends.redis_server import free_port
from tests.backends.test_two_processes import TARGET, race

redis = pytest.importorskip("redis", reason="the redis package is not installed")

from durable_agent.backends.redis import RedisBackend  # noqa: E402
from tests.backends.cluster_store import (  # noqa: E402
    cluster_store,  # noqa: F401  (the fixture `store`)
    forget,
    key_of,
    raw_client,
)
from tests.backends.redis_raw import LOST, wrong_length_log_refuses_the_append  # noqa: E402

# -- the contract ----------------------------------------------------------------------------


class TestRedisClusterBackend(BackendConformance):
    async def backend(self, redis_cluster_url: str) -> AsyncIterator[Backend]:  # noqa: F811
        prefix = f"test-{uuid.uuid4().hex[:10]}:"
        store = RedisBackend(redis_cluster_url, prefix=prefix, session_id="s1", user_id="u1")
        assert store.cluster
        yield store
        await store.close()
        await forget(redis_cluster_url, prefix)

    async def reopen(self, store: Backend) -> Backend:
        assert isinstance(store, RedisBackend)
        return RedisBackend(store._url, prefix=store.prefix)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, RedisBackend)
        async with raw_client(store._url) as client:
            if seq is None:
                await client.hset(key_of(store, run_id, "header"), "state", "BOGUS")
            else:
                await client.lset(key_of(store, run_id, "events"), seq - 1, "{garbage")

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, RedisBackend)
        async with raw_client(store._url) as client:
            newer = str(SCHEMA_VERSION + 1)
            await client.hset(key_of(store, run_id, "header"), "schema_version", newer)


# -- where the keys are ------------------------------------------------------------------------


def test_runs_spread_over_every_master_and_each_run_keeps_to_one_slot(
    store: RedisBackend,
) -> None:
    async def main() -> None:
        ids = [f"run-{i}" for i in range(40)] + ["ünï-☃", "a{b}c", "x}y"]
        for run_id in ids:
            await store.create_run(header(run_id, session_id="s"), [created()])
        async with raw_client(store._url) as client:
            await client.initialize()
            masters: set[str] = set()
            for run_id in ids:
                head, events = key_of(store, run_id, "header"), key_of(store, run_id, "events")
                assert client.keyslot(head) == client.keyslot(events), run_id
                assert await client.exists(head) == 1
                masters.add(client.get_node_from_key(head).name)
            assert len(masters) == 3, f"runs landed on {masters} only"
            index = {
                client.keyslot(k)
                for k in (f"{store.prefix}{{idx}}:created", f"{store.prefix}{{idx}}:session:s")
            }
            assert len(index) == 1
        assert {h.run_id for h in (await store.list_runs(limit=100)).runs} == set(ids)
        with pytest.raises(ConfigurationError, match="may not start with"):
            await store.create_run(header("}x"), [created()])

    run(main())



@LOST
def test_a_log_of_the_wrong_length_refuses_the_append_and_leaves_it_as_it_was(
    store: RedisBackend, lost: int
) -> None:
    run(wrong_length_log_refuses_the_append(store, lost))


# -- URLs and options ----------------------------------------------------------------------------


def test_cluster_urls_and_options() -> None:
    store = open_backend("redis+cluster://:pw@127.0.0.1:7000?prefix=app:&retention=60")
    assert isinstance(store, RedisBackend)
    assert (store.cluster, store.prefix, store._retention_ms) == (True, "app:", "60000")
    assert store._node_url == "redis://:pw@127.0.0.1:7000"
    assert "pw" not in repr(store)
    tls = open_backend("rediss+cluster://127.0.0.1:7001/0")
    assert isinstance(tls, RedisBackend)
    assert tls.cluster
    assert tls._node_url == "rediss://127.0.0.1:7001/0"
    assert RedisBackend("redis://127.0.0.1:7002", cluster=True).cluster
    assert not RedisBackend("redis://127.0.0.1:7002/3").cluster


@pytest.mark.parametrize(
    ("url", "cluster", "match"),
    [
        ("redis+cluster://127.0.0.1:7000/3", None, "only database 0"),
        ("redis+cluster://127.0.0.1:7000", False, "names a Redis Cluster"),
        ("unix:///tmp/redis.sock", True, "unix socket"),
    ],
)
def test_bad_cluster_options_raise_configuration_error(
    url: str, cluster: bool | None, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisBackend(url, cluster=cluster)
    if cluster is None:
        with pytest.raises(ConfigurationError, match=match):
            open_backend(url)


def test_an_unreachable_cluster_raises_store_unavailable() -> None:
    store = RedisBackend(
        f"redis+cluster://127.0.0.1:{free_port()}", connect_timeout=0.5, socket_timeout=0.5
    )

    async def main() -> None:
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.create_run(header("r1"), [created()])
        with pytest.raises(StoreUnavailableError):
            await store.list_runs()
        await store.close()

    run(main())


# -- two processes ------------------------------------------------------------------------------


def test_two_processes_appending_to_one_run_on_a_cluster_win_each_seq_once(
    redis_cluster_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = f"{redis_cluster_url}?prefix=race-{uuid.uuid4().hex[:10]}:"

    async def setup() -> str:
        async with open_backend(url) as store:
            lease = await new_run(store, "race")
            return lease.model_dump_json()

    results = race(url, run(setup()), tmp_path)
    wins = [set(r["wins"]) for r in results]
    assert not wins[0] & wins[1]
    assert wins[0] | wins[1] == set(range(2, TARGET + 1))
    assert sum(r["refused"] for r in results) > 0, f"the writers never collided: {results}"

    async def check() -> None:
        async with open_backend(url) as store:
            loaded = await store.load_run("race")
        assert [e.seq for e in loaded.events] == list(range(1, TARGET + 1))
        owners = {seq: r["me"] for r in results for seq in r["wins"]}
        for event in loaded.events[1:]:
            assert isinstance(event, TransitionEvent)
            assert event.trigger == owners[event.seq]

    run(check())
