"""Looking at a `SqliteBackend` from outside: a plain connection to its file, its statements.

For the SQLite tests that check what the store wrote, damage a row, or count
the statements a batch ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from durable_agent.backends.sqlite import SqliteBackend

__all__ = ["raw_db", "trace"]


@contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the file, in autocommit mode, closed afterwards."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


async def trace(store: SqliteBackend) -> list[str]:
    """Record every statement the store's connection runs from now on."""
    statements: list[str] = []
    await store._read(lambda db: db.set_trace_callback(statements.append))
    return statements
