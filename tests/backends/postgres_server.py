"""The local PostgreSQL for tests: a schema of its own per test, dropped afterwards.

`postgres_url` is the pytest fixture: ``DURABLE_AGENT_TEST_POSTGRES_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``), or a skip with the
reason when the server does not answer; under CI (``CI=true``) it fails instead.
Other test sessions may share the server, so every name is unique per test.
"""

from __future__ import annotations

import os
import uuid

import pytest

URL = os.environ.get(
    "DURABLE_AGENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def admin(statement: str) -> None:
    """Run one statement in autocommit on the test server (skips or fails when unreachable)."""
    import psycopg

    try:
        conn = psycopg.connect(URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {URL} is not reachable ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests, but {reason}")
        pytest.skip(reason)
    with conn:
        conn.execute(statement)


def new_schema() -> str:
    """A schema name no other test (or test session) uses."""
    return f"da_test_{uuid.uuid4().hex[:12]}"


def drop(schema: str) -> None:
    admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def postgres_url() -> str:
    admin("SELECT 1")
    return URL


@pytest.fixture
def pg_schema(postgres_url: str) -> object:
    schema = new_schema()
    yield schema
    drop(schema)
