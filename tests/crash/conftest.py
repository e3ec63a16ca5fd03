"""Crash-test fixtures: the private Redis the Redis cases run against."""

from __future__ import annotations

from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
