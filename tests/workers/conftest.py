"""Fixtures of the worker tests: the Redis server of the backend tests."""

from __future__ import annotations

from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
