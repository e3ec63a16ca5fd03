"""`PostgresBackend`'s reads of many runs: a page of `list_runs`, and the runs `prune` deletes.

A header that does not validate is never dropped silently: a listing reports it
in `RunPage.unreadable`, and a prune keeps it (its state and age are unknown).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

import psycopg

from durable_agent.backend import Position, RunPage, UnreadableRun, decode_cursor, make_page
from durable_agent.backends import _postgres_sql as q
from durable_agent.backends._postgres_link import first_line
from durable_agent.errors import ConfigurationError, CorruptRunError, StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import RunHeader

if TYPE_CHECKING:
    from durable_agent.backends.postgres import PostgresBackend

__all__ = ["page", "prune"]


async def page(
    backend: PostgresBackend,
    *,
    session_id: str | None,
    user_id: str | None,
    states: Collection[RunState] | None,
    created_after: datetime | None,
    created_before: datetime | None,
    limit: int,
    cursor: str | None,
) -> RunPage:
    """`PostgresBackend.list_runs`: newest first, unreadable rows reported, not counted."""
    backend._check_open()
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ConfigurationError(f"list_runs(limit={limit}) must be at least 1")
    where: list[str] = ["TRUE"]
    params: list[object] = []
    for column, value in (("session_id", session_id), ("user_id", user_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if states is not None:
        wanted = sorted({RunState(s).value for s in states})
        if not wanted:
            return RunPage(runs=(), next_cursor=None)
        where.append("state = ANY(%s)")
        params.append(wanted)
    if created_after is not None:
        where.append("created_at > %s")
        params.append(q.timestamp(created_after, "list_runs(created_after=...)"))
    if created_before is not None:
        where.append("created_at < %s")
        params.append(q.timestamp(created_before, "list_runs(created_before=...)"))
    if cursor:
        where.append("(created_at, run_id) < (%s, %s)")
        params.extend(decode_cursor(cursor))
    found: list[RunHeader] = []
    unreadable: list[tuple[Position | None, UnreadableRun]] = []
    after: tuple[float, str] | None = None
    # A page of `limit + 1` readable headers; unreadable rows met on the way
    # do not count, so ask again past them until the page is full.
    while len(found) <= limit:
        clauses = [*where, "(created_at, run_id) < (%s, %s)"] if after else where
        asked = limit + 1 - len(found)
        query = backend._sql.q(
            f"SELECT {q.HEADER_COLUMNS} FROM {{runs}} WHERE {' AND '.join(clauses)}"
            " ORDER BY created_at DESC, run_id DESC LIMIT %s"
        )
        rows = await backend._read(query, (*params, *(after or ()), asked))
        for row in rows:
            try:
                found.append(q.header_from_row(row))
            except CorruptRunError as exc:
                place = (float(row[6]), str(row[0]))
                unreadable.append((place, UnreadableRun.from_error(str(row[0]), exc)))
        if len(rows) < asked:
            break
        after = (float(rows[-1][6]), str(rows[-1][0]))
    return make_page(found, limit=limit, unreadable=unreadable)


async def prune(
    backend: PostgresBackend, older_than: datetime, states: Collection[RunState]
) -> int:
    """`PostgresBackend.prune`: delete, in one transaction, the readable rows that qualify."""
    before = q.timestamp(older_than, "prune(older_than=...)")
    wanted = sorted({RunState(s).value for s in states})
    if not wanted:
        backend._check_open()
        return 0
    link = await backend._connected()
    try:
        async with link.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(backend._sql.prune, {"states": wanted, "before": before})
            doomed: list[str] = []
            for row in await cur.fetchall():
                try:
                    q.header_from_row(row)
                except CorruptRunError:
                    continue  # reported by load_run, never deleted by a sweep
                doomed.append(str(row[0]))
            if not doomed:
                return 0
            cur = await conn.execute(backend._sql.prune_delete, {"ids": doomed})
            found = await cur.fetchone()
            return int(found[0]) if found else 0
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"PostgreSQL store {backend._where}: prune failed ({first_line(exc)})"
        ) from exc
