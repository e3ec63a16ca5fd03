"""The shipped conformance suite (durable_agent.testing.conformance) on every built-in backend.

Each class gives the suite only what a custom backend author gives it: a
``backend`` async generator, and the optional ``reopen`` / ``damage`` hooks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from durable_agent.backend import Backend
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import SCHEMA_VERSION
from durable_agent.testing.conformance import BackendConformance
from tests.backends.sqlite_raw import raw_db


class TestMemoryBackend(BackendConformance):
    async def backend(self) -> AsyncIterator[Backend]:
        store = MemoryBackend(session_id="s1", user_id="u1")
        yield store
        await store.close()

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, MemoryBackend)
        stored = store._runs[run_id]
        if seq is None:
            stored.header = "{not json"
        else:
            stored.events[seq - 1] = "{not json"

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, MemoryBackend)
        stored = store._runs[run_id]
        stored.header = _newer(stored.header)


class TestSqliteBackend(BackendConformance):
    async def backend(self, tmp_path: Path) -> AsyncIterator[Backend]:
        store = SqliteBackend(tmp_path / "runs.db", session_id="s1", user_id="u1")
        yield store
        await store.close()

    async def reopen(self, store: Backend) -> Backend:
        assert isinstance(store, SqliteBackend)
        return SqliteBackend(store._path)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, SqliteBackend)
        with raw_db(store._path) as conn:
            if seq is None:
                conn.execute("UPDATE runs SET state = 'BOGUS' WHERE run_id = ?", (run_id,))
            else:
                conn.execute(
                    "UPDATE events SET body = '{garbage' WHERE run_id = ? AND seq = ?",
                    (run_id, seq),
                )

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, SqliteBackend)
        with raw_db(store._path) as conn:
            conn.execute(
                "UPDATE runs SET schema_version = ? WHERE run_id = ?", (SCHEMA_VERSION + 1, run_id)
            )


class TestJsonFileBackend(BackendConformance):
    async def backend(self, tmp_path: Path) -> AsyncIterator[Backend]:
        store = JsonFileBackend(tmp_path / "runs", session_id="s1", user_id="u1")
        yield store
        await store.close()

    async def reopen(self, store: Backend) -> Backend:
        assert isinstance(store, JsonFileBackend)
        return JsonFileBackend(store.folder)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, JsonFileBackend)
        folder = Path(store.folder) / run_id
        if seq is None:
            (folder / "header.json").write_text('{"run_id": "bad", "state": "BOGUS"}\n')
            return
        log = folder / "events.jsonl"
        lines = log.read_bytes().split(b"\n")
        events = [i for i, line in enumerate(lines) if line.startswith(b'{"schema_version"')]
        lines[events[seq - 1]] = b"{garbage"
        log.write_bytes(b"\n".join(lines))

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, JsonFileBackend)
        path = Path(store.folder) / run_id / "header.json"
        path.write_text(_newer(path.read_text()) + "\n")


class TestRedisBackend(BackendConformance):
    async def backend(self, redis_url: str) -> AsyncIterator[Backend]:
        from durable_agent.backends.redis import RedisBackend

        prefix = f"test-{uuid.uuid4().hex[:10]}:"
        store = RedisBackend(redis_url, prefix=prefix, session_id="s1", user_id="u1")
        yield store
        await store.close()
        await _forget(redis_url, prefix)

    async def reopen(self, store: Backend) -> Backend:
        from durable_agent.backends.redis import RedisBackend

        assert isinstance(store, RedisBackend)
        return RedisBackend(store._url, prefix=store.prefix)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        from redis.asyncio import Redis

        assert hasattr(store, "prefix")
        header_key, events_key = (f"{store.prefix}{{{run_id}}}:{k}" for k in ("header", "events"))
        async with Redis.from_url(store._url) as client:  # type: ignore[attr-defined]
            if seq is None:
                await client.hset(header_key, "state", "BOGUS")
            else:
                await client.lset(events_key, seq - 1, "{garbage")

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        from redis.asyncio import Redis

        assert hasattr(store, "prefix")
        header_key = f"{store.prefix}{{{run_id}}}:header"
        async with Redis.from_url(store._url) as client:  # type: ignore[attr-defined]
            await client.hset(header_key, "schema_version", str(SCHEMA_VERSION + 1))


def _newer(header_text: str) -> str:
    """A stored header's JSON text as a newer durable-agent would have written it."""
    fields = json.loads(header_text)
    fields["schema_version"] = SCHEMA_VERSION + 1
    return json.dumps(fields)


async def _forget(url: str, prefix: str) -> None:
    """Delete every key of one test's store (the server may be shared)."""
    from redis.asyncio import Redis

    async with Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)


def test_a_groups_required_capabilities_skip_only_that_groups_tests() -> None:
    """In the combined suite a group's ``required`` must not become every group's.

    It did twice (MigrationTests, then RelayTests): the class attribute the MRO
    found first skipped most of the suite on stores without that capability.
    """
    from types import SimpleNamespace
    from typing import Any

    from durable_agent.backend import Capability
    from durable_agent.testing.conformance import RelayTests, RunTests

    suite = TestMemoryBackend()

    def required(test: Any) -> frozenset[Capability]:
        return suite._required(SimpleNamespace(function=test))  # type: ignore[arg-type]

    run_tests = [getattr(TestMemoryBackend, n) for n in vars(RunTests) if n.startswith("test_")]
    relay_tests = [
        getattr(TestMemoryBackend, n) for n in vars(RelayTests) if n.startswith("test_")
    ]
    assert run_tests
    assert relay_tests
    assert all(required(t) == frozenset() for t in run_tests)
    assert all(required(t) == frozenset({Capability.RELAY}) for t in relay_tests)
