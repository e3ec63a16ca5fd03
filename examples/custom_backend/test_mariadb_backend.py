"""The conformance suite on the example MariaDB backend: a fixture, three hooks, nothing else.

Run with: ``pytest examples/custom_backend`` (CI runs it through
tests/backends/test_custom_backend_example.py). Each test gets a database of
its own, dropped afterwards. Without PyMySQL or a reachable MariaDB the tests
skip with the reason (under CI, where ``CI=true``, they fail instead).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from durable_agent.backend import Backend
from durable_agent.records import SCHEMA_VERSION
from durable_agent.testing.conformance import BackendConformance

URL = os.environ.get("DURABLE_AGENT_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")


def _admin(statement: str, database: str | None = None) -> None:
    import pymysql

    parts = urlsplit(URL)
    try:
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            database=database or parts.path.strip("/"),
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.OperationalError as exc:
        reason = f"MariaDB at {URL} is not reachable ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the example backend's tests, but {reason}")
        pytest.skip(reason)
    with conn, conn.cursor() as cur:
        cur.execute(statement)


class TestMariaDbBackend(BackendConformance):
    async def backend(self) -> AsyncIterator[Backend]:
        if os.environ.get("CI") != "true":
            pytest.importorskip("pymysql", reason="pip install PyMySQL")
        from .mariadb_backend import MariaDbBackend

        database = f"conformance_{uuid.uuid4().hex[:12]}"
        _admin(f"CREATE DATABASE {database}")
        url = urlunsplit(urlsplit(URL)._replace(path=f"/{database}"))
        store = MariaDbBackend(url, session_id="s1", user_id="u1")
        try:
            yield store
            await store.close()
        finally:
            _admin(f"DROP DATABASE {database}")

    async def reopen(self, store: Backend) -> Backend:
        from .mariadb_backend import MariaDbBackend

        assert isinstance(store, MariaDbBackend)
        return MariaDbBackend(store.url)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        from .mariadb_backend import MariaDbBackend

        assert isinstance(store, MariaDbBackend)
        if seq is None:
            _admin(
                "UPDATE durable_runs SET header = '{\"state\": \"BOGUS\"}'"
                f" WHERE run_id = '{run_id}'",
                store.database,
            )
        else:
            _admin(
                "UPDATE durable_events SET body = '{garbage'"
                f" WHERE run_id = '{run_id}' AND seq = {seq}",
                store.database,
            )

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        from .mariadb_backend import MariaDbBackend

        assert isinstance(store, MariaDbBackend)
        _admin(
            f"UPDATE durable_runs SET header = JSON_SET(header, '$.schema_version',"
            f" {SCHEMA_VERSION + 1}) WHERE run_id = '{run_id}'",
            store.database,
        )
