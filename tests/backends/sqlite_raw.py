"""Looking at a `SqliteBackend` from outside: a plain connection to its file, its statements.

For the SQLite tests that check what the store wrote, damage a row, or count
the statements a batch ran (`concurrent_appends` makes such a batch).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import Lease
from tests.backends.conftest import new_run, step

__all__ = ["Appended", "concurrent_appends", "raw_db", "trace"]


@contextmanager
def raw_db(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the file, in autocommit mode, closed afterwards."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


async def trace(store: SqliteBackend) -> list[str]:
    """Record every statement the store's connection runs from now on."""
    statements: list[str] = []
    await store._read(lambda db: db.set_trace_callback(statements.append))
    return statements


@dataclass(frozen=True)
class Appended:
    """What `concurrent_appends` did: the runs, their leases before and after, the batch."""

    ids: list[str]
    leases: list[Lease]
    renewed: list[Lease]
    statements: list[str]
    """Every statement the store ran for the appends (`trace`)."""
    commits: int
    """How many commits the appends took."""


async def concurrent_appends(store: SqliteBackend, count: int) -> Appended:
    """Create ``count`` runs, then append one event to each, all at once."""
    ids = [f"r{i:03d}" for i in range(count)]
    leases = await asyncio.gather(*(new_run(store, run_id) for run_id in ids))
    statements = await trace(store)
    commits_before = store._stats.commits
    renewed = await asyncio.gather(
        *(
            store.append(run_id, [step(2)], expected_seq=1, lease=lease)
            for run_id, lease in zip(ids, leases, strict=True)
        )
    )
    commits = store._stats.commits - commits_before
    return Appended(ids, list(leases), list(renewed), statements, commits)
