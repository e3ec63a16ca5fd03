"""A PostgreSQL store as the previous release (record schema 1) wrote it, built by SQL.

The previous release's ``PostgresBackend`` created the tables below (layout
version 1, ``store_version`` = 1) and wrote each run as one ``runs`` row and
one ``events`` row per event, the body being the event's compact JSON, the
same text its SQLite store wrote. So the v1 store is the v1 SQLite file's
rows (``tests/data/v1/runs.db``) in these tables; the columns SQLite has not
(``queue``, ``priority``, ``not_before``) hold what that release wrote for a
run started without them. Checked once against that code (main before the
safety merge, 14d5833): the same columns, indexes and rows.

The statements are a frozen copy, not `_postgres_schema.MIGRATIONS`: a later
layout step must still be tested against the layout the old release made.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final

import psycopg

DATA: Final = Path(__file__).parent.parent / "data" / "v1"

_LAYOUT_1: Final = (
    "CREATE SCHEMA {s}",
    "CREATE TABLE {s}.store_version (version INTEGER NOT NULL)",
    """CREATE TABLE {s}.runs (
        run_id TEXT PRIMARY KEY, session_id TEXT, user_id TEXT, agent_name TEXT NOT NULL,
        state TEXT NOT NULL, seq INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, lease_owner TEXT, lease_host TEXT,
        lease_pid INTEGER, lease_generation INTEGER NOT NULL DEFAULT 0,
        lease_expires DOUBLE PRECISION, lease_ttl DOUBLE PRECISION,
        schema_version INTEGER NOT NULL, cancel_requested TEXT,
        queue TEXT NOT NULL DEFAULT 'default', priority INTEGER NOT NULL DEFAULT 0,
        not_before DOUBLE PRECISION
    ) WITH (fillfactor = 80)""",
    "CREATE INDEX runs_by_created ON {s}.runs (created_at, run_id)",
    "CREATE INDEX runs_by_session ON {s}.runs (session_id, created_at, run_id)",
    "CREATE INDEX runs_by_user ON {s}.runs (user_id, created_at, run_id)",
    "CREATE INDEX runs_by_state ON {s}.runs (state, created_at, run_id)",
    """CREATE INDEX runs_claimable ON {s}.runs (priority DESC, created_at, run_id)
        WHERE state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC')""",
    """CREATE INDEX runs_leased ON {s}.runs (lease_host, lease_owner)
        WHERE lease_owner IS NOT NULL""",
    """CREATE TABLE {s}.events (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    """CREATE TABLE {s}.workers (
        owner TEXT PRIMARY KEY, lock_key INTEGER NOT NULL, expires DOUBLE PRECISION NOT NULL
    )""",
    "CREATE SEQUENCE {s}.worker_keys AS INTEGER CYCLE",
    "INSERT INTO {s}.store_version (version) VALUES (1)",
)

_COLUMNS: Final = (
    "run_id, session_id, user_id, agent_name, state, seq, created_at, updated_at, "
    "lease_owner, lease_host, lease_pid, lease_generation, lease_expires, lease_ttl, "
    "schema_version, cancel_requested"
)


def write_v1_store(url: str, schema: str, *, copies: int = 0) -> list[str]:
    """Create ``schema`` as the previous release left it, holding the four v1 runs.

    With ``copies``, the DONE run ``done-1`` is also copied that many times
    (``copy-0000``…), each a little newer. Returns every run id.
    """
    with closing(sqlite3.connect(DATA / "runs.db")) as old:
        runs = old.execute(f"SELECT {_COLUMNS} FROM runs").fetchall()
        events = old.execute("SELECT run_id, seq, body FROM events").fetchall()
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for statement in _LAYOUT_1:
            conn.execute(statement.format(s=schema))
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {schema}.runs ({_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})", runs
            )
            cur.executemany(f"INSERT INTO {schema}.events VALUES (%s, %s, %s)", events)
        if copies:
            conn.execute(
                f"INSERT INTO {schema}.runs ({_COLUMNS}) SELECT 'copy-' || lpad(i::text, 4, '0'),"
                " session_id, user_id, agent_name, state, seq, created_at + i / 1000.0,"
                " updated_at, lease_owner, lease_host, lease_pid, lease_generation,"
                " lease_expires, lease_ttl, schema_version, cancel_requested"
                f" FROM {schema}.runs, generate_series(0, %s - 1) AS i WHERE run_id = 'done-1'",
                (copies,),
            )
            conn.execute(
                f"INSERT INTO {schema}.events SELECT 'copy-' || lpad(i::text, 4, '0'), seq, body"
                f" FROM {schema}.events, generate_series(0, %s - 1) AS i"
                " WHERE run_id = 'done-1'",
                (copies,),
            )
        rows = conn.execute(f"SELECT run_id FROM {schema}.runs ORDER BY run_id").fetchall()
    return [str(r[0]) for r in rows]


def migrated(url: str, schema: str, version: int) -> int:
    """How many runs' headers are at ``version`` (the last write of a run's migration)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {schema}.runs WHERE schema_version = %s", (version,)
        ).fetchone()
    return int(row[0]) if row else 0
