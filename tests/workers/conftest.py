"""Fixtures of the worker tests: the Redis server and Redis Cluster of the backend tests."""

from __future__ import annotations

from tests.backends.redis_cluster import redis_cluster_url  # noqa: F401  (a fixture)
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
