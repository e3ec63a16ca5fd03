"""A plain redis-py client on a test's Redis (or Redis Cluster), and checks that use one.

`raw_client` looks at (or damages) what `RedisBackend` stored, under the keys
`key_of` names; a cluster URL (``redis+cluster://``) gets a cluster client.
Import it after ``pytest.importorskip("redis")``.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from durable_agent.backends.redis import RedisBackend
from durable_agent.errors import CorruptRunError
from tests.backends.conftest import new_run, step

__all__ = ["LOST", "key_of", "raw_client", "wrong_length_log_refuses_the_append"]


def raw_client(url: str) -> Redis | RedisCluster:
    """A plain redis-py client on the server (or cluster) of a backend URL."""
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}")
    return Redis.from_url(url)


def key_of(store: RedisBackend, run_id: str, part: str) -> str:
    """The key of one of a run's parts (``header``, ``events``) in ``store``."""
    return f"{store.prefix}{{{run_id}}}:{part}"


LOST = pytest.mark.parametrize("lost", [1, 2], ids=["one event lost", "the whole log lost"])
"""How many of a run's two events `wrong_length_log_refuses_the_append` takes away."""


async def wrong_length_log_refuses_the_append(store: RedisBackend, lost: int) -> None:
    """Take ``lost`` events off a run's log of two: an append is refused, nothing changes.

    The append's script checks the log's length by RPUSH's reply, then takes
    its events back out: the log must read as before the append, the header
    must be unchanged (on one Redis and on a cluster alike).
    """
    lease = await new_run(store, "r1")
    lease = await store.append("r1", [step(2)], expected_seq=1, lease=lease)
    events = key_of(store, "r1", "events")
    async with raw_client(store._url) as client:
        await client.rpop(events, lost)
        before = await client.lrange(events, 0, -1)
    with pytest.raises(CorruptRunError, match=f"does not match \\({2 - lost} 2\\)"):
        await store.append("r1", [step(3), step(4)], expected_seq=2, lease=lease)
    async with raw_client(store._url) as client:
        assert await client.lrange(events, 0, -1) == before
        assert await client.exists(events) == (1 if before else 0)
    assert (await store.get_run("r1")).seq == 2
