"""`PostgresBackend.migrate`: the table layout and the stored records, brought up to this version.

It runs on a connection of its own, holding a session advisory lock on the
schema's name for the whole migration, so two migrators never run at once:
the second waits, then finds the work done (a migrator that dies loses its
session, and with it the lock). Two parts, each made of steps that are atomic
on their own, so a process killed at any point leaves a store that reads
correctly, and running it again finishes the job:

1. **Layout**: the missing steps of `_postgres_schema.MIGRATIONS`, one
   transaction per step with the ``store_version`` row it reaches
   (`_postgres_schema.upgrade`, which opening a store also runs).
2. **Records**: every run holding a record of an older schema version is
   rewritten, in one statement (so one transaction) per run, into what
   reading it gives (`decode_event` upcasts, `encode_event` writes the current
   form), and the header's ``schema_version`` column is raised in the same
   statement (a header's fields are columns: a change of their shape is a
   layout step). These commit asynchronously (a rewrite lost with the
   server leaves its run unmigrated, which reads the same); one synchronous
   write at the end flushes them all before the report.
   The run's header row is locked first, as every write of the run does, so a
   writer's append waits for the rewrite (a few milliseconds) and then goes
   on: the rewrite never changes ``seq`` or the lease, so no compare-and-set
   breaks. A reader sees the run either before or after. A run whose records
   do not decode, or that holds a record newer than this code, is left as it
   is and named in the report.

Finding the older records reads no JSON in SQL: the encoder writes
``schema_version`` first, so a body that does not begin with the current
version's prefix is a candidate, and Python decides.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import errors, sql

from durable_agent.backend import MigrationReport
from durable_agent.backends import _postgres_schema as layout
from durable_agent.errors import CorruptRunError, StoreUnavailableError
from durable_agent.records import SCHEMA_VERSION, decode_event, encode_event

if TYPE_CHECKING:
    from durable_agent.backends.postgres import PostgresBackend

__all__ = ["migrate"]

PAGE: Final = 200
"""Runs looked at per query."""

_PREFIX: Final = f'{{"schema_version":{SCHEMA_VERSION},'
"""How every event body this version encodes begins."""

_RETRIES: Final = 5
"""Attempts at one run's rewrite when the server picks it as a deadlock's victim."""


async def migrate(backend: PostgresBackend, dry_run: bool) -> MigrationReport:
    """Migrate ``backend``'s schema (see the module docstring); ``dry_run`` writes nothing."""
    settings = backend._settings
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.url, autocommit=True, connect_timeout=max(1, round(settings.connect_timeout))
        )
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL store {settings.where}: {_first(exc)}"
        ) from exc
    try:
        await conn.execute("SET synchronous_commit = on")
        return await _Migration(conn, settings.schema, repr(backend), dry_run).run()
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"PostgreSQL store {settings.where}: migration failed ({_first(exc)}); every step "
            "already committed is whole, run it again"
        ) from exc
    finally:
        await conn.close()  # also releases the migration's advisory lock


class _Migration:
    def __init__(
        self, conn: psycopg.AsyncConnection[Any], schema: str, store: str, dry_run: bool
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.store = store
        self.dry_run = dry_run
        self.steps: list[str] = []
        self.runs = sql.Identifier(schema, "runs")
        self.events = sql.Identifier(schema, "events")

    async def run(self) -> MigrationReport:
        key = "durable_agent.migrate:" + self.schema
        cur = await self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
        row = await cur.fetchone()
        if row is None or not row[0]:
            self.steps.append("waited for another migration of this schema to finish")
            await self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        before = await layout.version(self.conn, self.schema)
        target = layout.STORE_VERSION
        if self.dry_run:
            for step in range((before or 0) + 1, target + 1):
                self.steps.append(f"table layout {step - 1} -> {step}")
            if before is None:  # no tables: no records either
                return self._report(before, before, 0, 0)
        else:
            for step in await layout.upgrade(self.conn, self.schema):
                self.steps.append(f"table layout {step - 1} -> {step}")
        # The rewrites commit asynchronously: one lost with the server's last
        # moments only leaves its run unmigrated, which reads the same, and the
        # WAL keeps them in order, so a writer's later (synchronous) append
        # flushes every rewrite before it. 1 ms per run instead of an fsync each.
        await self.conn.execute("SET synchronous_commit = off")
        checked, rewritten = await self._records()
        await self.conn.execute("SET synchronous_commit = on")
        if rewritten and not self.dry_run:
            # One synchronous write flushes the WAL, with every rewrite, before the report.
            await self.conn.execute(
                sql.SQL("UPDATE {} SET version = version").format(
                    sql.Identifier(self.schema, "store_version")
                )
            )
        after = before if self.dry_run else target
        if not self.steps:
            self.steps.append(
                f"nothing to do: layout {before}, every record at schema {SCHEMA_VERSION}"
            )
        return self._report(before, after, checked, rewritten)

    def _report(
        self, before: int | None, after: int | None, checked: int, rewritten: int
    ) -> MigrationReport:
        return MigrationReport(
            store=self.store, layout_before=before, layout_after=after, runs_checked=checked,
            runs_rewritten=rewritten, steps=tuple(self.steps), dry_run=self.dry_run,
        )

    async def _records(self) -> tuple[int, int]:
        checked = rewritten = 0
        after = ""
        pages = sql.SQL(
            "SELECT run_id, schema_version FROM {} WHERE run_id > %s ORDER BY run_id LIMIT %s"
        ).format(self.runs)
        while True:
            cur = await self.conn.execute(pages, (after, PAGE))
            page = [(str(r[0]), int(r[1])) for r in await cur.fetchall()]
            if not page:
                return checked, rewritten
            checked += len(page)
            after = page[-1][0]
            candidates = await self._candidates([run_id for run_id, _ in page])
            for run_id, version in page:
                if version > SCHEMA_VERSION:
                    self.steps.append(
                        f"left run {run_id!r} as it is: its header is of schema {version}, "
                        f"newer than this durable-agent's {SCHEMA_VERSION}"
                    )
                    continue
                try:
                    changes = _changes(run_id, candidates.get(run_id, []))
                except CorruptRunError as exc:
                    self.steps.append(f"left run {run_id!r} as it is: {exc}")
                    continue
                if version == SCHEMA_VERSION and not changes:
                    continue
                if self.dry_run:
                    rewritten += 1
                    self.steps.append(f"rewrite run {run_id!r} at record schema {SCHEMA_VERSION}")
                elif await self._rewrite(run_id, changes):
                    rewritten += 1

    async def _candidates(self, run_ids: list[str]) -> dict[str, list[tuple[int, str]]]:
        """The events of ``run_ids`` whose body does not begin as this version's do."""
        query = sql.SQL(
            "SELECT run_id, seq, body FROM {} WHERE run_id = ANY(%s) AND left(body, %s) <> %s "
            "ORDER BY run_id, seq"
        ).format(self.events)
        cur = await self.conn.execute(query, (run_ids, len(_PREFIX), _PREFIX))
        found: dict[str, list[tuple[int, str]]] = {}
        for run_id, seq, body in await cur.fetchall():
            found.setdefault(str(run_id), []).append((int(seq), str(body)))
        return found

    async def _rewrite(self, run_id: str, changes: list[tuple[int, str, str]]) -> bool:
        """Rewrite one run in one statement (one transaction); False when it was left."""
        params = (
            run_id,
            [seq for seq, _, _ in changes],
            [old for _, old, _ in changes],
            [new for _, _, new in changes],
            len(changes),
            SCHEMA_VERSION,
        )
        for attempt in range(1, _RETRIES + 1):
            try:
                cur = await self.conn.execute(self._statement, params)
                row = await cur.fetchone()
            except errors.DeadlockDetected:
                # A delete of the same run locked its rows in the other order; the
                # server rolled this one back whole. Try again (it may be gone then).
                if attempt == _RETRIES:
                    raise
                continue
            if row is None:
                return False  # deleted since it was read
            if not row[0]:
                self.steps.append(
                    f"left run {run_id!r} as it is: its records changed while it was read "
                    "(deleted and written again?); run migrate again"
                )
                return False
            self.steps.append(
                f"rewrote {len(changes)} record(s) of run {run_id!r} at schema {SCHEMA_VERSION}"
            )
            return True
        return False

    @property
    def _statement(self) -> sql.Composed:
        # The header row is locked first, as every write of the run locks it; each
        # event is replaced only if it still holds the text read (events never
        # change once written, so a mismatch means the run was deleted and written
        # again), and the header's version is raised only when every one was.
        return sql.SQL(
            """WITH h AS (SELECT run_id FROM {runs} WHERE run_id = %s FOR UPDATE),
            upd AS (
                UPDATE {events} e SET body = v.new
                FROM h, unnest(%s::int[], %s::text[], %s::text[]) AS v(seq, old, new)
                WHERE e.run_id = h.run_id AND e.seq = v.seq AND e.body = v.old
                RETURNING 1
            ),
            done AS (SELECT count(*) = %s AS whole FROM upd),
            bump AS (
                UPDATE {runs} r SET schema_version = GREATEST(r.schema_version, %s)
                FROM h, done WHERE r.run_id = h.run_id AND done.whole
            )
            SELECT done.whole FROM h, done"""
        ).format(runs=self.runs, events=self.events)


def _changes(run_id: str, candidates: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """(seq, old body, new body) of each event older than this version."""
    changes = []
    for seq, body in candidates:
        if _version(run_id, seq, body) < SCHEMA_VERSION:
            changes.append((seq, body, encode_event(decode_event(run_id, seq, body))))
    return changes


def _version(run_id: str, seq: int, body: str) -> int:
    """The schema version of one stored event; `CorruptRunError` (a refusal) when unreadable."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise CorruptRunError(run_id, seq, f"the event is not JSON ({exc})") from exc
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptRunError(run_id, seq, f"the event has no valid schema_version ({version!r})")
    if version > SCHEMA_VERSION:
        # decode_event raises SchemaVersionError (a CorruptRunError) naming the version.
        decode_event(run_id, seq, body)
    return version


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
