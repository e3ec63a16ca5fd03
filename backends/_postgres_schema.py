"""`PostgresBackend`'s tables: created on first use, versioned, migrated forward.

Everything lives in one PostgreSQL schema (``durable_agent`` unless the URL's
``?schema=`` says otherwise), so several applications, or several test runs,
share a database without seeing each other:

* ``store_version`` holds one row, the version of the layout below. Opening a
  store created by an older durable-agent applies the missing steps of
  `MIGRATIONS`, one transaction per step (with the version row it reaches);
  a store from a newer one is refused, left untouched. ``durable-agent
  migrate`` applies them too, then the records' own migration
  (`durable_agent.backends._postgres_migrate`).
* ``runs`` is the header, one column per field (``queue``, ``priority`` and
  ``not_before`` are what workers claim by).
* ``workers`` holds the registered workers and their liveness lock keys.
* ``events`` is the log: ``(run_id, seq)`` and the event's compact JSON text.
  Text, not ``jsonb``: the records' encoder is the one serializer, and
  ``jsonb`` refuses a ``\\u0000`` that JSON (and the records) allow.

Concurrent first opens (a fleet starting together) are serialized by a
transaction-level advisory lock on the schema's name.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import sql

from durable_agent.errors import StoreUnavailableError

__all__ = ["CLAIMABLE", "MIGRATIONS", "STORE_VERSION", "prepare", "upgrade", "version"]

CLAIMABLE: Final = "('PENDING', 'MODEL_CALL', 'TOOL_EXEC')"
"""The states a worker claims runs in (not at rest), as SQL; the claimable index holds these."""

_V1: Final = (
    """CREATE TABLE {schema}.runs (
        run_id TEXT PRIMARY KEY,
        session_id TEXT,
        user_id TEXT,
        agent_name TEXT NOT NULL,
        state TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_host TEXT,
        lease_pid INTEGER,
        lease_generation INTEGER NOT NULL DEFAULT 0,
        lease_expires DOUBLE PRECISION,
        lease_ttl DOUBLE PRECISION,
        schema_version INTEGER NOT NULL,
        cancel_requested TEXT,
        queue TEXT NOT NULL DEFAULT 'default',
        priority INTEGER NOT NULL DEFAULT 0,
        not_before DOUBLE PRECISION
    ) WITH (fillfactor = 80)""",
    # fillfactor 80 leaves room on each page, so the append's update of a header
    # (no indexed column changes) stays a heap-only tuple update: no index writes.
    "CREATE INDEX runs_by_created ON {schema}.runs (created_at, run_id)",
    "CREATE INDEX runs_by_session ON {schema}.runs (session_id, created_at, run_id)",
    "CREATE INDEX runs_by_user ON {schema}.runs (user_id, created_at, run_id)",
    "CREATE INDEX runs_by_state ON {schema}.runs (state, created_at, run_id)",
    # Only runs not at rest are ever claimable: the index stays as small as the
    # work in flight however many finished runs the table keeps, and its order
    # is the claim order, so a claim reads it from the front and stops.
    f"""CREATE INDEX runs_claimable ON {{schema}}.runs (priority DESC, created_at, run_id)
        WHERE state IN {CLAIMABLE}""",
    # The leases held now, by host: a claim looks up this host's dead processes.
    """CREATE INDEX runs_leased ON {schema}.runs (lease_host, lease_owner)
        WHERE lease_owner IS NOT NULL""",
    """CREATE TABLE {schema}.events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    # Registered workers: a registration lapses at `expires` (the server's clock)
    # or as soon as the session holding the advisory lock `lock_key` is gone.
    """CREATE TABLE {schema}.workers (
        owner TEXT PRIMARY KEY,
        lock_key INTEGER NOT NULL,
        expires DOUBLE PRECISION NOT NULL
    )""",
    "CREATE SEQUENCE {schema}.worker_keys AS INTEGER CYCLE",
)

_V2: Final = (
    # Claims read the runs nobody holds and the runs held by someone apart
    # (`_postgres_claims`): a store with 10^4 runs in flight no longer makes
    # every claim step over their live leases at the front of one index. Both
    # predicates name lease_owner, already indexed (runs_leased), and an append
    # changes it only when it releases: appends stay heap-only updates.
    "DROP INDEX IF EXISTS {schema}.runs_claimable",
    f"""CREATE INDEX IF NOT EXISTS runs_claimable_free
        ON {{schema}}.runs (priority DESC, created_at, run_id)
        WHERE state IN {CLAIMABLE} AND lease_owner IS NULL""",
    f"""CREATE INDEX IF NOT EXISTS runs_claimable_held
        ON {{schema}}.runs (priority DESC, created_at, run_id)
        WHERE state IN {CLAIMABLE} AND lease_owner IS NOT NULL""",
    # Statistics for the new partial indexes now, not at the first autovacuum
    # (which a server may not run): a claim planned without them can pick a
    # sequential scan of a table of finished runs.
    "ANALYZE {schema}.runs",
)

_V3: Final = (
    # A capped claim counts the runs of each limited queue that hold a place
    # (`holds_place`: a held lease on a run not at rest). Through runs_leased
    # that count visited every held run of every queue and its heap row; with
    # 5,000 held it cost ~3.5 ms per claim. Here it is a range of one queue's
    # entries. It names only columns other indexes already name (queue is never
    # written after create_run), so an append that was a heap-only update stays one.
    # `queue IS NOT NULL` (always true) keeps it to statements naming one queue:
    # without it the claim's pick of held runs, which must walk them in claim
    # order from runs_claimable_held and stop at its LIMIT, could read all of this
    # index and sort them (the planner chose that with few runs held).
    f"""CREATE INDEX IF NOT EXISTS runs_placed ON {{schema}}.runs (queue)
        WHERE state IN {CLAIMABLE} AND lease_owner IS NOT NULL AND queue IS NOT NULL""",
    "ANALYZE {schema}.runs",
)

MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {1: _V1, 2: _V2, 3: _V3}
"""Version -> the statements that bring a store from the version before it up to it.

Version 2 split the claimable index in two (runs nobody holds, runs held);
version 3 added the index of the runs holding a place in their queue.
A later layout adds ``4: ("ALTER TABLE {schema}.runs ADD COLUMN ...", ...)``;
every store walks the steps it lacks, in order, one transaction per step.
"""

STORE_VERSION: Final = max(MIGRATIONS)
"""The layout this durable-agent writes."""


async def prepare(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create or migrate the tables of ``schema`` (idempotent, safe to race).

    The common case, a store already at `STORE_VERSION`, costs one query.
    """
    if await _version(conn, schema) != STORE_VERSION:
        await upgrade(conn, schema)


async def upgrade(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Apply the missing steps of `MIGRATIONS`, one transaction each; return the versions reached.

    Each step's statements and the ``store_version`` row it writes commit
    together, so a process killed at any point leaves the store at a whole
    version, and the next opener (or ``durable-agent migrate``) goes on from
    there. ``conn`` must be in autocommit.
    """
    names = {"schema": sql.Identifier(schema)}
    reached: list[int] = []
    while True:
        async with conn.transaction():
            # One upgrader at a time: the others wait here, then find the step done.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('durable_agent.schema:' || %s))", (schema,)
            )
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**names))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {schema}.store_version (version INTEGER NOT NULL)"
                ).format(**names)
            )
            version = await _version(conn, schema) or 0
            if version > STORE_VERSION:
                raise StoreUnavailableError(
                    f"PostgreSQL schema {schema!r} has table layout version {version}, but this "
                    f"durable-agent reads up to {STORE_VERSION}; upgrade durable-agent to open "
                    "it (the store was left untouched)"
                )
            if version == STORE_VERSION:
                return reached
            step = version + 1
            for statement in MIGRATIONS[step]:
                await conn.execute(sql.SQL(statement).format(**names))
            await conn.execute(sql.SQL("DELETE FROM {schema}.store_version").format(**names))
            await conn.execute(
                sql.SQL("INSERT INTO {schema}.store_version (version) VALUES (%s)").format(
                    **names
                ),
                (step,),
            )
        reached.append(step)


async def version(conn: psycopg.AsyncConnection[Any], schema: str) -> int | None:
    """The layout version of ``schema``'s store, None when it has no tables yet."""
    return await _version(conn, schema)


async def _version(conn: psycopg.AsyncConnection[Any], schema: str) -> int | None:
    cur = await conn.execute(
        "SELECT to_regclass(format('%%I.store_version', %s::text)) IS NOT NULL", (schema,)
    )
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT max(version) FROM {schema}.store_version").format(
            schema=sql.Identifier(schema)
        )
    )
    found = await cur.fetchone()
    return None if found is None or found[0] is None else int(found[0])
