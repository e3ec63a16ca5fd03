"""Opening `SqliteBackend`'s file: the pragmas, the tables, and a crowd opening it at once.

Runs in aiosqlite's worker thread, called once per connection by
`durable_agent.backends.sqlite`.
"""

from __future__ import annotations

import random
import sqlite3
import time
from typing import Final

from durable_agent.errors import StoreUnavailableError

STORE_VERSION: Final = 4
"""Version of the table layout below, kept in the ``meta`` table.

2 added the workers' columns (queue, priority, not_before), the index of
claimable runs and the ``workers`` table; 3 the indexes a claim reads besides
it (free runs, places held per queue, leases per host); 4 replaced the
claimable runs by the held runs, and narrowed the leases per host to every
held lease, so a held run's state moves leave both alone. An older file is
migrated on open, one step after the other in one transaction.
"""

CLAIMABLE: Final = "state IN ('PENDING', 'MODEL_CALL', 'TOOL_EXEC')"
"""The claimable states as SQL; a claim repeats it verbatim so SQLite uses the partial index."""

_WORKERS_TABLE: Final = """CREATE TABLE IF NOT EXISTS workers (
        owner TEXT PRIMARY KEY,
        expires REAL NOT NULL
    ) WITHOUT ROWID"""

_WORKERS_SCHEMA: Final = (
    # Layout 2 to 3 (4 drops it): the runs not at rest.
    f"""CREATE INDEX IF NOT EXISTS runs_claimable
        ON runs (priority DESC, created_at, run_id) WHERE {CLAIMABLE}""",
    _WORKERS_TABLE,
)

_CLAIM_INDEXES: Final = (
    # A claim reads the runs nobody holds from the front of this one, so it never
    # steps over the live leases in flight (5,000 of them, the oldest: 1.5 ms).
    f"""CREATE INDEX IF NOT EXISTS runs_claimable_free
        ON runs (priority DESC, created_at, run_id) WHERE {CLAIMABLE} AND lease_owner IS NULL""",
    # A capped claim counts one queue's runs holding a place in the index alone
    # (state and lease_owner in it too: SQLite checks the terms of the partial
    # index's WHERE again, and would read each run's row for them).
    f"""CREATE INDEX IF NOT EXISTS runs_placed
        ON runs (queue, state, lease_owner) WHERE {CLAIMABLE} AND lease_owner IS NOT NULL""",
)

_HELD_INDEXES: Final = (
    # Every held lease, at rest or not (a run at rest is held only while a
    # decision or a resume is recorded, or after its holder died doing so):
    # claims read the rows for the state. With the state in their WHERE, SQLite
    # rewrote their entries on each state move of a held run (every append of
    # a running one), as it does for every index whose key or WHERE has a
    # column an UPDATE sets. Appends set the lease's owner, host and pid only
    # when they release it. Released runs (every finished one) are in neither,
    # so claiming costs the same with a million finished runs as with none.
    # This host's lease owners, whose processes a claim checks:
    """CREATE INDEX IF NOT EXISTS runs_leased
        ON runs (lease_host, lease_owner, lease_pid) WHERE lease_owner IS NOT NULL""",
    # The held runs in claim order, for those whose lease lapsed (a claim reads
    # their rows for the state and the expiry):
    """CREATE INDEX IF NOT EXISTS runs_held
        ON runs (priority DESC, created_at, run_id) WHERE lease_owner IS NOT NULL""",
)

_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE runs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default'",
    "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN not_before REAL",
    *_WORKERS_SCHEMA,
)

_MIGRATE_3_TO_4: Final = (
    "DROP INDEX IF EXISTS runs_leased",
    "DROP INDEX IF EXISTS runs_claimable",
    *_HELD_INDEXES,
)

_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    2: _MIGRATE_1_TO_2,
    3: _CLAIM_INDEXES,
    4: _MIGRATE_3_TO_4,
}
"""Version -> the statements that bring a file from the version before it up to it."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # Headers are small, so they live in their primary-key b-tree (WITHOUT ROWID).
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        session_id TEXT,
        user_id TEXT,
        agent_name TEXT NOT NULL,
        state TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        lease_owner TEXT,
        lease_host TEXT,
        lease_pid INTEGER,
        lease_generation INTEGER NOT NULL,
        lease_expires REAL,
        lease_ttl REAL,
        schema_version INTEGER NOT NULL,
        cancel_requested TEXT,
        queue TEXT NOT NULL DEFAULT 'default',
        priority INTEGER NOT NULL DEFAULT 0,
        not_before REAL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_session ON runs (session_id, created_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_user ON runs (user_id, created_at, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, created_at, run_id)",
    # Events often exceed the ~200 bytes SQLite recommends for WITHOUT ROWID rows
    # (model answers, tool results), so they stay in a rowid table whose
    # interior pages hold only rowids; the (run_id, seq) key is a separate index.
    """CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    _WORKERS_TABLE,
    *_CLAIM_INDEXES,
    *_HELD_INDEXES,
)


def prepare(db: sqlite3.Connection, path: str, synchronous: str, busy_ms: int) -> None:
    """Set the pragmas and create the tables (once, in one transaction), in SQLite's thread.

    Several processes may open a brand-new file at the same moment (a fleet of
    workers starting together). Switching it to WAL needs the file alone, and
    SQLite refuses that at once with "database is locked" rather than wait in
    its busy handler (waiting there could deadlock), so a busy refusal is tried
    again, with a growing, jittered pause, for up to ``busy_ms``.
    """
    deadline = time.monotonic() + busy_ms / 1000
    pause = 0.001
    while True:
        try:
            version = _prepare_once(db, path, synchronous, busy_ms)
            break
        except sqlite3.OperationalError as exc:
            left = deadline - time.monotonic()
            if not _busy(exc) or left <= 0:
                hint = "; another process held the file longer than busy_timeout"
                raise StoreUnavailableError(
                    f"cannot open SQLite store {path}: {exc}{hint if _busy(exc) else ''}"
                ) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open SQLite store {path}: {exc}") from exc
        time.sleep(min(left, pause * random.uniform(0.5, 1.5)))
        pause = min(pause * 2, 0.05)
    if version > STORE_VERSION:
        raise StoreUnavailableError(
            f"SQLite store {path} has table layout version {version}, but this durable-agent "
            f"reads up to {STORE_VERSION}; upgrade durable-agent to open it (the file was left "
            "untouched)"
        )


class _NotYetWal(sqlite3.OperationalError):
    """The WAL switch answered another journal mode: another connection was in the way."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    if isinstance(exc, _NotYetWal):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _prepare_once(db: sqlite3.Connection, path: str, synchronous: str, busy_ms: int) -> int:
    db.execute(f"PRAGMA busy_timeout = {busy_ms}")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise _NotYetWal(
            f"the switch to WAL mode was refused (journal mode stayed {mode and mode[0]!r})"
        )
    db.execute(f"PRAGMA synchronous = {synchronous}")
    version = _store_version(db, path)
    if version is not None and version >= STORE_VERSION:
        return version
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _store_version(db, path)  # another process may have been first
        if version is None or version < STORE_VERSION:
            steps = (
                _SCHEMA
                if version is None
                else tuple(
                    statement
                    for step in range(version + 1, STORE_VERSION + 1)
                    for statement in _MIGRATIONS[step]
                )
            )
            for statement in steps:
                db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(STORE_VERSION),),
            )
            version = STORE_VERSION
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    return version


def _store_version(db: sqlite3.Connection, path: str) -> int | None:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if exists is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreUnavailableError(
            f"SQLite store {path}: meta.schema_version is {row[0]!r}, not a number; the file "
            "is damaged or was not written by durable-agent"
        ) from None
