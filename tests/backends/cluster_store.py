"""A `RedisBackend` on the test cluster, and a plain client to look at what it stored.

The ``store`` fixture is a backend with a prefix of its own on the session's
cluster (`tests.backends.redis_cluster`), its keys deleted after the test; it is
imported as `cluster_store`, so that the tests' own ``store`` parameters do not
shadow the import. `raw_client` and `key_of` (from `tests.backends.redis_raw`) read
or damage what it stored. Import it after ``pytest.importorskip("redis")``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from durable_agent.backends.redis import RedisBackend
from tests.backends.conftest import run
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)
from tests.backends.redis_raw import key_of, raw_client

__all__ = ["cluster_store", "forget", "key_of", "raw_client"]


async def forget(url: str, prefix: str) -> None:
    """Delete every key of one test's store, on every master."""
    async with raw_client(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for key in keys:
            await client.delete(key)


@pytest.fixture(name="store")
def cluster_store(redis_cluster_url: str) -> Iterator[RedisBackend]:  # noqa: F811
    """The fixture ``store``: a backend on the cluster with keys of its own, deleted after."""
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    backend = RedisBackend(redis_cluster_url, prefix=prefix)
    yield backend
    run(backend.close())
    run(forget(redis_cluster_url, prefix))
