"""Crash-test fixtures: the stores every crash test runs against, and the private Redis.

``store_url`` gives each case a fresh store of the module's kind; a module
that runs the same tests on another store (`tests/backends/test_redis_cluster_crash.py`)
defines its own ``store_url``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.backends import postgres_server
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
from tests.crash.processes import StoreUrl


@pytest.fixture(scope="module", params=["sqlite", "redis", "jsonfile", "postgres"])
def store_url(request: pytest.FixtureRequest) -> StoreUrl:
    """Every durable built-in backend: the same kills and checks run against each."""
    if request.param == "sqlite":
        return lambda where: f"sqlite:///{where / 'runs.db'}"
    if request.param == "jsonfile":
        return lambda where: f"file://{where / 'runs'}"
    if request.param == "postgres":
        return _postgres_urls(request)
    server: str = request.getfixturevalue("redis_url")
    # One private server for the module; each case gets keys of its own.
    return lambda where: f"{server}?prefix=crash-{uuid.uuid4().hex[:12]}:"


def _postgres_urls(request: pytest.FixtureRequest) -> StoreUrl:
    """A schema of its own per case on the local server, all dropped after the module."""
    postgres_server.admin("SELECT 1")  # skips (fails under CI) when the server is down
    schemas: list[str] = []

    def url(where: Path) -> str:
        schemas.append(postgres_server.new_schema())
        return f"{postgres_server.URL}?schema={schemas[-1]}"

    def drop_all() -> None:
        for schema in schemas:
            postgres_server.drop(schema)

    request.addfinalizer(drop_all)
    return url
