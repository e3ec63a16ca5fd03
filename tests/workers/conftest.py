"""Fixtures of the worker tests: the Redis server and Redis Cluster of the backend tests.

`durable_store` opens a fresh store of each built-in kind.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from durable_agent.backend import Backend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.registry import open_backend
from tests.backends import postgres_server
from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)


@pytest.fixture(params=["memory", "sqlite", "jsonfile", "redis", "postgres"])
def durable_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Backend]]:
    """Opens a fresh store of each kind (inside the test's event loop: stores bind to it)."""
    schema = None
    if request.param == "memory":
        memory = MemoryBackend()
        yield lambda: memory
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    elif request.param == "jsonfile":
        url = f"file://{tmp_path / 'runs'}"
    elif request.param == "redis":
        url = f"{request.getfixturevalue('redis_url')}?prefix=retry-{uuid.uuid4().hex[:10]}:"
    else:
        postgres_server.admin("SELECT 1")  # skips (fails under CI) when the server is down
        schema = postgres_server.new_schema()
        url = f"{postgres_server.URL}?schema={schema}"
    yield lambda: open_backend(url)
    if schema is not None:
        postgres_server.drop(schema)
