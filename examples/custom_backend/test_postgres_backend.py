"""The conformance suite on the example PostgreSQL backend: a fixture, three hooks, nothing else.

Run with: ``pytest examples/custom_backend`` (CI runs it through
tests/backends/test_custom_backend_example.py). Each test gets a schema of its
own, dropped afterwards. Without psycopg or a reachable PostgreSQL the tests
skip with the reason (under CI, where ``CI=true``, they fail instead).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from durable_agent.backend import Backend
from durable_agent.records import SCHEMA_VERSION
from durable_agent.testing.conformance import BackendConformance

URL = os.environ.get("DURABLE_AGENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")


async def _admin(statement: str) -> None:
    import psycopg

    try:
        conn = await psycopg.AsyncConnection.connect(URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {URL} is not reachable ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the example backend's tests, but {reason}")
        pytest.skip(reason)
    async with conn:
        await conn.execute(statement)


class TestPostgresBackend(BackendConformance):
    async def backend(self) -> AsyncIterator[Backend]:
        if os.environ.get("CI") != "true":
            pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]'")
        from .postgres_backend import PostgresBackend

        schema = f"conformance_{uuid.uuid4().hex[:12]}"
        await _admin(f"CREATE SCHEMA {schema}")
        store = PostgresBackend(URL, schema=schema, session_id="s1", user_id="u1")
        try:
            yield store
            await store.close()
        finally:
            await _admin(f"DROP SCHEMA {schema} CASCADE")

    async def reopen(self, store: Backend) -> Backend:
        from .postgres_backend import PostgresBackend

        assert isinstance(store, PostgresBackend)
        return PostgresBackend(store.url, schema=store.schema)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        from .postgres_backend import PostgresBackend

        assert isinstance(store, PostgresBackend)
        if seq is None:
            await _admin(
                f"UPDATE {store.schema}.durable_runs SET header = '{{\"state\": \"BOGUS\"}}'"
                f" WHERE run_id = '{run_id}'"
            )
        else:
            await _admin(
                f"UPDATE {store.schema}.durable_events SET body = '{{garbage'"
                f" WHERE run_id = '{run_id}' AND seq = {seq}"
            )

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        from .postgres_backend import PostgresBackend

        assert isinstance(store, PostgresBackend)
        await _admin(
            f"UPDATE {store.schema}.durable_runs SET header = jsonb_set(header::jsonb,"
            f" '{{schema_version}}', to_jsonb({SCHEMA_VERSION + 1}))::text"
            f" WHERE run_id = '{run_id}'"
        )
