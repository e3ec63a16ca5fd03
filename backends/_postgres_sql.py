"""The statements of `PostgresBackend`, each one round trip, and rows <-> records.

Every write is a single statement: the compare-and-set is its ``WHERE``
clause, the events ride in a data-modifying ``WITH`` that runs only when the
header's update matched, and times are the database server's
(``clock_timestamp()``), never the client's. A statement that matches no row
refused the write; the backend then reads the header once to say why, with
the shared rules of `durable_agent.backend` (`check_append`,
`check_lease_acquire`), so it decides exactly as every other store.

A header row has the same nineteen columns, in the same order, as SQLite's, so
both SQL stores share one row <-> record mapping (`header_from_row`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from psycopg import sql

from durable_agent.backends._postgres_writer import Merge
from durable_agent.backends._sqlite_ops import header_from_row, header_row, renewed, timestamp
from durable_agent.fsm import RunState
from durable_agent.records import SCHEMA_VERSION, Event, RunHeader, encode_events

__all__ = [
    "HEADER_COLUMNS",
    "Statements",
    "event_arrays",
    "header_from_row",
    "header_row",
    "merges",
    "renewed",
    "timestamp",
]

HEADER_COLUMNS: Final = (
    "run_id, session_id, user_id, agent_name, state, seq, created_at, updated_at, "
    "lease_owner, lease_host, lease_pid, lease_generation, lease_expires, lease_ttl, "
    "schema_version, cancel_requested, queue, priority, not_before"
)
"""The header's columns in `header_from_row`'s order."""

WIDTH: Final = HEADER_COLUMNS.count(",") + 1
"""How many columns a header row has."""

NOW: Final = "extract(epoch FROM clock_timestamp())::float8"
"""The server's clock in seconds since the epoch: every lease expiry is judged by it."""

_STATES: Final = ", ".join(f"'{s.value}'" for s in RunState)

# A header whose state or version this code cannot read is never written over:
# the guard makes the write refuse, and the follow-up read raises CorruptRunError
# or SchemaVersionError for it.
_READABLE: Final = f"r.state IN ({_STATES}) AND r.schema_version <= {SCHEMA_VERSION}"

_APPEND: Final = f"""
WITH now AS (SELECT {NOW} AS t),
upd AS (
    UPDATE {{runs}} r SET
        seq = %(new_seq)s,
        state = COALESCE(%(state)s, r.state),
        updated_at = now.t,
        lease_owner = CASE WHEN %(release)s THEN NULL ELSE r.lease_owner END,
        lease_host = CASE WHEN %(release)s THEN NULL ELSE r.lease_host END,
        lease_pid = CASE WHEN %(release)s THEN NULL ELSE r.lease_pid END,
        lease_expires = CASE WHEN %(release)s THEN NULL ELSE now.t + %(ttl)s END,
        lease_ttl = CASE WHEN %(release)s THEN NULL ELSE %(ttl)s::float8 END
    FROM now
    WHERE r.run_id = %(run_id)s AND r.seq = %(expected)s
        AND r.lease_generation = %(generation)s AND r.lease_owner = %(owner)s
        AND {_READABLE}
    RETURNING r.cancel_requested, now.t + %(ttl)s AS expires
),
ins AS (
    INSERT INTO {{events}} (run_id, seq, body)
    SELECT %(run_id)s, e.seq, e.body
    FROM unnest(%(seqs)b::int[], %(bodies)b::text[]) AS e(seq, body)
    WHERE EXISTS (SELECT 1 FROM upd)
)
SELECT cancel_requested, expires FROM upd
"""

# The append of one event (the most common), without the arrays: unnesting
# two one-element arrays cost ~40 us more per append, measured by hand.
_APPEND_ONE: Final = _APPEND.replace(
    "FROM unnest(%(seqs)b::int[], %(bodies)b::text[]) AS e(seq, body)",
    "FROM (SELECT %(seq)s::int AS seq, %(body)s::text AS body) AS e",
)

# Several runs' appends in one statement (group commit): the same checks and
# writes as _APPEND, one row of `input` per append; a refused one matches no
# row of runs and has no row in the result. A run appears once per statement.
_APPEND_MANY: Final = f"""
WITH now AS (SELECT {NOW} AS t),
input AS (
    SELECT * FROM unnest(
        %(run_ids)s::text[], %(expected)s::int[], %(generations)s::int[], %(owners)s::text[],
        %(ttls)s::float8[], %(releases)s::bool[], %(new_seqs)s::int[], %(states)s::text[]
    ) WITH ORDINALITY AS i(run_id, expected, generation, owner, ttl, release, new_seq, state, ord)
),
upd AS (
    UPDATE {{runs}} r SET
        seq = i.new_seq,
        state = COALESCE(i.state, r.state),
        updated_at = now.t,
        lease_owner = CASE WHEN i.release THEN NULL ELSE r.lease_owner END,
        lease_host = CASE WHEN i.release THEN NULL ELSE r.lease_host END,
        lease_pid = CASE WHEN i.release THEN NULL ELSE r.lease_pid END,
        lease_expires = CASE WHEN i.release THEN NULL ELSE now.t + i.ttl END,
        lease_ttl = CASE WHEN i.release THEN NULL ELSE i.ttl END
    FROM input i, now
    WHERE r.run_id = i.run_id AND r.seq = i.expected
        AND r.lease_generation = i.generation AND r.lease_owner = i.owner
        AND {_READABLE}
    RETURNING i.ord, r.run_id, r.cancel_requested, now.t + i.ttl AS expires
),
ins AS (
    INSERT INTO {{events}} (run_id, seq, body)
    SELECT e.run_id, e.seq, e.body
    FROM unnest(%(event_runs)b::text[], %(seqs)b::int[], %(bodies)b::text[])
        AS e(run_id, seq, body)
    WHERE e.run_id IN (SELECT run_id FROM upd)
)
SELECT ord::int, cancel_requested, expires FROM upd
"""

_NAMES: Final = tuple(c.strip() for c in HEADER_COLUMNS.split(","))

_TYPES: Final = (
    "text", "text", "text", "text", "text", "int", "float8", "float8", "text", "text", "int",
    "int", "float8", "float8", "int", "text", "text", "int", "float8",
)  # fmt: skip
"""The SQL type of each header column, in `HEADER_COLUMNS`' order (the merged create's arrays)."""

_ARRAYS: Final = ", ".join(f"%({n})s::{t}[]" for n, t in zip(_NAMES, _TYPES, strict=True))

_CREATE: Final = f"""
WITH ins AS (
    INSERT INTO {{runs}} ({HEADER_COLUMNS})
    VALUES ({", ".join(f"%({n})s" for n in _NAMES)})
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
),
ev AS (
    INSERT INTO {{events}} (run_id, seq, body)
    SELECT ins.run_id, e.seq, e.body
    FROM ins, unnest(%(seqs)b::int[], %(bodies)b::text[]) AS e(seq, body)
)
SELECT run_id FROM ins
"""

# Several runs' creates in one statement: a run already there is skipped, as in
# _CREATE, and has no row in the result.
_CREATE_MANY: Final = f"""
WITH input AS (
    SELECT * FROM unnest({_ARRAYS})
        WITH ORDINALITY AS i({HEADER_COLUMNS}, ord)
),
ins AS (
    INSERT INTO {{runs}} ({HEADER_COLUMNS})
    SELECT {HEADER_COLUMNS} FROM input
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
),
ev AS (
    INSERT INTO {{events}} (run_id, seq, body)
    SELECT e.run_id, e.seq, e.body
    FROM unnest(%(event_runs)b::text[], %(seqs)b::int[], %(bodies)b::text[])
        AS e(run_id, seq, body)
    WHERE e.run_id IN (SELECT run_id FROM ins)
)
SELECT i.ord::int, ins.run_id FROM ins JOIN input i USING (run_id)
"""

_ACQUIRE: Final = f"""
WITH now AS (SELECT {NOW} AS t)
UPDATE {{runs}} r SET
    lease_owner = %(owner)s, lease_host = %(host)s, lease_pid = %(pid)s,
    lease_generation = r.lease_generation + 1,
    lease_expires = now.t + %(ttl)s, lease_ttl = %(ttl)s::float8
FROM now
WHERE r.run_id = %(run_id)s AND {_READABLE}
    AND (r.lease_owner IS NULL OR r.lease_expires <= now.t
         OR r.lease_generation = %(takeover)s OR r.lease_owner = %(owner)s)
RETURNING r.lease_generation, r.lease_expires, r.cancel_requested
"""

_RENEW: Final = f"""
WITH now AS (SELECT {NOW} AS t)
UPDATE {{runs}} r SET lease_expires = now.t + %(ttl)s, lease_ttl = %(ttl)s::float8
FROM now
WHERE r.run_id = %(run_id)s AND r.lease_generation = %(generation)s
    AND r.lease_owner IS NOT NULL AND {_READABLE}
RETURNING r.lease_expires, r.cancel_requested
"""

# Several runs' acquisitions in one statement: each keeps _ACQUIRE's check.
_ACQUIRE_MANY: Final = f"""
WITH now AS (SELECT {NOW} AS t),
input AS (
    SELECT * FROM unnest(
        %(run_ids)s::text[], %(owners)s::text[], %(hosts)s::text[], %(pids)s::int[],
        %(ttls)s::float8[], %(takeovers)s::int[]
    ) WITH ORDINALITY AS i(run_id, owner, host, pid, ttl, takeover, ord)
)
UPDATE {{runs}} r SET
    lease_owner = i.owner, lease_host = i.host, lease_pid = i.pid,
    lease_generation = r.lease_generation + 1,
    lease_expires = now.t + i.ttl, lease_ttl = i.ttl
FROM input i, now
WHERE r.run_id = i.run_id AND {_READABLE}
    AND (r.lease_owner IS NULL OR r.lease_expires <= now.t
         OR r.lease_generation = i.takeover OR r.lease_owner = i.owner)
RETURNING i.ord::int, r.lease_generation, r.lease_expires, r.cancel_requested
"""

# Several runs' renewals in one statement: each keeps _RENEW's check.
_RENEW_MANY: Final = f"""
WITH now AS (SELECT {NOW} AS t),
input AS (
    SELECT * FROM unnest(%(run_ids)s::text[], %(generations)s::int[], %(ttls)s::float8[])
        WITH ORDINALITY AS i(run_id, generation, ttl, ord)
)
UPDATE {{runs}} r SET lease_expires = now.t + i.ttl, lease_ttl = i.ttl
FROM input i, now
WHERE r.run_id = i.run_id AND r.lease_generation = i.generation
    AND r.lease_owner IS NOT NULL AND {_READABLE}
RETURNING i.ord::int, r.lease_expires, r.cancel_requested
"""

_RELEASE: Final = """
UPDATE {runs} SET lease_owner = NULL, lease_host = NULL, lease_pid = NULL,
    lease_expires = NULL, lease_ttl = NULL
WHERE run_id = %(run_id)s AND lease_generation = %(generation)s AND lease_owner IS NOT NULL
"""

_RELEASE_MANY: Final = """
UPDATE {runs} r SET lease_owner = NULL, lease_host = NULL, lease_pid = NULL,
    lease_expires = NULL, lease_ttl = NULL
FROM unnest(%(run_ids)s::text[], %(generations)s::int[]) AS i(run_id, generation)
WHERE r.run_id = i.run_id AND r.lease_generation = i.generation AND r.lease_owner IS NOT NULL
"""

_CANCEL: Final = f"""
UPDATE {{runs}} SET cancel_requested = COALESCE(cancel_requested, %(reason)s)
WHERE run_id = %(run_id)s
RETURNING {HEADER_COLUMNS}
"""

_DELETE: Final = """
WITH gone AS (DELETE FROM {runs} WHERE run_id = %(run_id)s RETURNING run_id),
ev AS (DELETE FROM {events} WHERE run_id = %(run_id)s)
SELECT count(*) FROM gone
"""

_HEADER: Final = f"SELECT {HEADER_COLUMNS}, {NOW} FROM {{runs}} WHERE run_id = %s"

# One statement, so the header and the events are one snapshot: an append
# committing between two reads would otherwise show more events than seq.
_LOAD: Final = f"""
SELECT {", ".join("r." + c.strip() for c in HEADER_COLUMNS.split(","))}, e.seqs, e.bodies
FROM {{runs}} r LEFT JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(body ORDER BY seq) AS bodies
    FROM {{events}} WHERE run_id = r.run_id
) e ON TRUE
WHERE r.run_id = %s
"""

_PRUNE: Final = f"""
SELECT {HEADER_COLUMNS} FROM {{runs}}
WHERE state = ANY(%(states)s) AND updated_at < %(before)s
    AND (lease_owner IS NULL OR lease_expires <= {NOW})
FOR UPDATE SKIP LOCKED
"""

_PRUNE_DELETE: Final = """
WITH gone AS (DELETE FROM {runs} WHERE run_id = ANY(%(ids)s) RETURNING run_id),
ev AS (DELETE FROM {events} WHERE run_id = ANY(%(ids)s))
SELECT count(*) FROM gone
"""


class Statements:
    """The statements above with one schema's table names filled in (composed once)."""

    def __init__(self, schema: str) -> None:
        names = {
            "runs": sql.Identifier(schema, "runs"),
            "events": sql.Identifier(schema, "events"),
            "workers": sql.Identifier(schema, "workers"),
            "worker_keys": sql.Identifier(schema, "worker_keys"),
        }

        def q(text: str) -> str:
            # Rendered once, as text: psycopg then caches each statement's parsing.
            return sql.SQL(text).format(**names).as_string(None)

        self.q = q
        self.append = q(_APPEND)
        self.append_one = q(_APPEND_ONE)
        self.append_many = q(_APPEND_MANY)
        self.create = q(_CREATE)
        self.create_many = q(_CREATE_MANY)
        self.acquire = q(_ACQUIRE)
        self.acquire_many = q(_ACQUIRE_MANY)
        self.renew = q(_RENEW)
        self.renew_many = q(_RENEW_MANY)
        self.release = q(_RELEASE)
        self.release_many = q(_RELEASE_MANY)
        self.cancel = q(_CANCEL)
        self.delete = q(_DELETE)
        self.header = q(_HEADER)
        self.load = q(_LOAD)
        self.prune = q(_PRUNE)
        self.prune_delete = q(_PRUNE_DELETE)


def merges(statements: Statements) -> dict[str, Merge]:
    """How the writer merges each kind of write, by the single write's statement."""

    def appends(params: list[dict[str, object]]) -> tuple[str, dict[str, object]]:
        return _merge_appends(statements, params)

    return {
        statements.append: appends,
        statements.append_one: appends,  # its one event becomes one row of the arrays
        statements.create: lambda creates: _merge_creates(statements, creates),
        statements.acquire: lambda acquisitions: (
            statements.acquire_many,
            _columns(acquisitions, _ACQUIRE_COLUMNS),
        ),
        statements.renew: lambda renewals: (
            statements.renew_many,
            _columns(renewals, _RENEW_COLUMNS),
        ),
        statements.release: lambda releases: (
            statements.release_many,
            _columns(releases, _RELEASE_COLUMNS),
        ),
    }


_APPEND_COLUMNS: Final = (
    ("run_ids", "run_id"), ("expected", "expected"), ("generations", "generation"),
    ("owners", "owner"), ("ttls", "ttl"), ("releases", "release"),
    ("new_seqs", "new_seq"), ("states", "state"),
)  # fmt: skip
_ACQUIRE_COLUMNS: Final = (
    ("run_ids", "run_id"), ("owners", "owner"), ("hosts", "host"), ("pids", "pid"),
    ("ttls", "ttl"), ("takeovers", "takeover"),
)  # fmt: skip
_RENEW_COLUMNS: Final = (("run_ids", "run_id"), ("generations", "generation"), ("ttls", "ttl"))
_RELEASE_COLUMNS: Final = (("run_ids", "run_id"), ("generations", "generation"))


def _columns(
    writes: list[dict[str, object]], columns: Sequence[tuple[str, str]]
) -> dict[str, object]:
    """The writes' parameters as one array per column (array name, parameter name)."""
    return {name: [w[key] for w in writes] for name, key in columns}


def _merge_appends(
    statements: Statements, appends: list[dict[str, object]]
) -> tuple[str, dict[str, object]]:
    """`Statements.append_many` and its parameters for the appends of distinct runs."""
    params = _columns(appends, _APPEND_COLUMNS)
    params.update(_events(appends))
    return statements.append_many, params


def _merge_creates(
    statements: Statements, creates: list[dict[str, object]]
) -> tuple[str, dict[str, object]]:
    """`Statements.create_many` and its parameters for the creates of distinct runs."""
    params = _columns(creates, [(name, name) for name in _NAMES])
    params.update(_events(creates))
    return statements.create_many, params


def _events(writes: list[dict[str, object]]) -> dict[str, object]:
    """The writes' events as three arrays: the run of each, its seq, its body."""
    event_runs: list[object] = []
    seqs: list[object] = []
    bodies: list[object] = []
    for w in writes:
        if "seqs" not in w:  # an append of one event (`Statements.append_one`)
            event_runs.append(w["run_id"])
            seqs.append(w["seq"])
            bodies.append(w["body"])
            continue
        more = cast(list[object], w["seqs"])
        event_runs += [w["run_id"]] * len(more)
        seqs += more
        bodies += cast(list[object], w["bodies"])
    return {"event_runs": event_runs, "seqs": seqs, "bodies": bodies}


def event_arrays(events: Sequence[Event]) -> tuple[list[int], list[str]]:
    """The events as the two arrays the statements unnest: seqs and encoded bodies."""
    return [e.seq for e in events], encode_events(events)


def create_params(header: RunHeader, events: Sequence[Event]) -> dict[str, object]:
    """The parameters of `Statements.create` for a new run."""
    params: dict[str, object] = dict(zip(_NAMES, header_row(header), strict=True))
    params["seqs"], params["bodies"] = event_arrays(events)
    return params
