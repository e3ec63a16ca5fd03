"""PostgresBackend: the conformance suite, group commit, the server's clock, secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator

from durable_agent.backend import Backend
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.records import SCHEMA_VERSION
from durable_agent.testing.conformance import BackendConformance
from tests.backends.postgres_server import admin, drop, new_schema, pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]


class TestPostgresBackend(BackendConformance):
    async def backend(self, postgres_url: str) -> AsyncIterator[Backend]:
        schema = new_schema()
        store = PostgresBackend(postgres_url, schema=schema, session_id="s1", user_id="u1")
        try:
            yield store
            await store.close()
        finally:
            drop(schema)

    async def reopen(self, store: Backend) -> Backend:
        assert isinstance(store, PostgresBackend)
        return PostgresBackend(store.url, schema=store.schema)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, PostgresBackend)
        if seq is None:
            admin(f"UPDATE {store.schema}.runs SET state = 'BOGUS' WHERE run_id = '{run_id}'")
        else:
            admin(
                f"UPDATE {store.schema}.events SET body = '{{garbage'"
                f" WHERE run_id = '{run_id}' AND seq = {seq}"
            )

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, PostgresBackend)
        admin(
            f"UPDATE {store.schema}.runs SET schema_version = {SCHEMA_VERSION + 1}"
            f" WHERE run_id = '{run_id}'"
        )
