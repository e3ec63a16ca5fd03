"""Stores written before workers existed: they open, upgrade, and their runs are claimable."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from durable_agent.backend import LeaseOwner
from durable_agent.backends._sqlite_schema import STORE_VERSION
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import CreatedEvent, RunHeader, UserMessage, encode_event

# The table layout version 1 (durable-agent before workers), as it created it.
_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, session_id TEXT, user_id TEXT, agent_name TEXT NOT NULL,
        state TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, lease_owner TEXT, lease_host TEXT, lease_pid INTEGER,
        lease_generation INTEGER NOT NULL, lease_expires REAL, lease_ttl REAL,
        schema_version INTEGER NOT NULL, cancel_requested TEXT
    ) WITHOUT ROWID""",
    "CREATE INDEX runs_by_created ON runs (created_at, run_id)",
    "CREATE INDEX runs_by_state ON runs (state, created_at, run_id)",
    """CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq))""",
    "INSERT INTO meta VALUES ('schema_version', '1')",
)


def test_a_version_1_sqlite_file_is_upgraded_and_its_old_runs_load_with_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    event = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in _V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO runs VALUES ('old', NULL, NULL, 'agent', 'PENDING', 1, 1.0, 1.0, "
            "NULL, NULL, NULL, 0, NULL, NULL, 1, NULL)"
        )
        conn.execute("INSERT INTO events VALUES ('old', 1, ?)", (encode_event(event),))

    async def main() -> None:
        async with SqliteBackend(path) as store:
            header = await store.get_run("old")
            assert (header.queue, header.priority, header.not_before) == ("default", 0, None)
            (claim,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
            assert claim.run_id == "old"
            assert claim.lease.generation == 1

    asyncio.run(main())
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(STORE_VERSION),)
        for index, held in (("runs_claimable_free", "NULL"), ("runs_held", "NOT NULL")):
            plan = " ".join(
                str(row)
                for row in conn.execute(
                    f"EXPLAIN QUERY PLAN SELECT run_id FROM runs INDEXED BY {index} WHERE "
                    f"state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC') AND lease_owner IS {held} "
                    "ORDER BY priority DESC, created_at, run_id"
                )
            )
            assert index in plan  # claims never read the released (finished) runs
            assert "TEMP B-TREE" not in plan  # in claim order: no sort of them either


def test_a_version_2_sqlite_file_gets_the_claim_indexes_and_its_held_runs_count_toward_the_cap(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"

    async def fill() -> None:
        async with SqliteBackend(path) as store:
            for run_id in ("held", "next"):
                first = CreatedEvent(
                    seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),)
                )
                await store.create_run(
                    RunHeader(run_id=run_id, agent_name="agent", seq=1, queue="q"), [first]
                )
            (got,) = await store.claim_runs(LeaseOwner.current(), agents=["agent"], ttl=300)
            assert got.run_id == "held"

    asyncio.run(fill())
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        # Back to layout 2: without the indexes layout 3 added, as version 2 wrote it.
        for name in ("runs_claimable_free", "runs_placed", "runs_leased"):
            conn.execute(f"DROP INDEX {name}")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    async def claim() -> list[str]:
        async with SqliteBackend(path) as store:
            got = await store.claim_runs(
                LeaseOwner.current(), agents=["agent"], limit=5, max_running={"q": 1}
            )
            return [c.run_id for c in got]

    assert asyncio.run(claim()) == []  # the held run fills the queue's one place
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(STORE_VERSION),)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"runs_claimable_free", "runs_placed", "runs_leased"} <= names
        plan = " ".join(
            str(row)
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT queue, count(*) FROM runs INDEXED BY runs_placed "
                "WHERE state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC') "
                "AND lease_owner IS NOT NULL AND queue IN ('q') GROUP BY queue"
            )
        )
        assert "COVERING INDEX runs_placed" in plan  # one queue's entries, no row read


def test_a_version_3_sqlite_file_gets_the_indexes_of_every_held_lease(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"

    async def fill() -> None:
        async with SqliteBackend(path) as store:
            first = CreatedEvent(
                seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),)
            )
            await store.create_run(RunHeader(run_id="r", agent_name="agent", seq=1), [first])

    asyncio.run(fill())
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        # Back to layout 3: runs_leased as it was, with the claimable states in its
        # WHERE, and the index of the runs not at rest instead of runs_held.
        conn.execute("DROP INDEX runs_leased")
        conn.execute("DROP INDEX runs_held")
        conn.execute(
            "CREATE INDEX runs_leased ON runs (lease_host, lease_owner, lease_pid) WHERE "
            "state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC') AND lease_owner IS NOT NULL"
        )
        conn.execute(
            "CREATE INDEX runs_claimable ON runs (priority DESC, created_at, run_id) WHERE "
            "state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC')"
        )
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    async def claim() -> list[str]:
        async with SqliteBackend(path) as store:
            got = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
            # The claim after reads this host's owners and the held runs from the new
            # indexes (INDEXED BY would fail on the old ones).
            assert await store.claim_runs(LeaseOwner.current(), agents=["agent"]) == []
            return [c.run_id for c in got]

    assert asyncio.run(claim()) == ["r"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(STORE_VERSION),)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "runs_claimable" not in names  # replaced by runs_held
        for index in ("runs_leased", "runs_held"):
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = ?", (index,)
            ).fetchone()
            assert "state" not in sql, sql
        plan = " ".join(
            str(row)
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT DISTINCT lease_owner, lease_pid FROM runs INDEXED BY "
                "runs_leased WHERE lease_owner IS NOT NULL AND lease_host = 'h'"
            )
        )
        assert "COVERING INDEX runs_leased" in plan  # this host's range, no row read
        for index in ("runs_leased", "runs_held"):
            assert conn.execute(
                f"SELECT run_id FROM runs INDEXED BY {index} WHERE lease_owner IS NOT NULL"
            ).fetchall() == [("r",)]
