"""`SqliteBackend.migrate`: the table layout and the stored records, brought up to this version.

Runs in aiosqlite's thread on the backend's connection. Two parts, each made of
steps that are atomic on their own, so a process killed at any point leaves a
store that reads correctly, and running it again finishes the job:

1. **Layout**: one transaction per step from the file's ``meta.schema_version``
   up to `STORE_VERSION` (``LAYOUT_STEPS``; none yet: opening the file already
   applies the layout upgrades, such as version 1 -> 2 for workers, in
   `_sqlite_schema`). A file newer than this code is refused before this runs.
2. **Records**: every run holding a record of an older schema version is
   rewritten, in one ``BEGIN IMMEDIATE`` transaction per run, into what reading
   it gives (`decode_event` upcasts, `encode_event` writes the current form).
   Other processes may use the file meanwhile: a run's rewrite never changes
   its ``seq`` or lease, so it cannot break a writer's compare-and-set, and a
   reader sees the run either before or after. A run whose records do not
   decode is left as it is and named in the report.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Final

from durable_agent.backend import MigrationReport
from durable_agent.backends._sqlite_schema import STORE_VERSION
from durable_agent.errors import CorruptRunError
from durable_agent.records import SCHEMA_VERSION, decode_event, encode_event

LAYOUT_STEPS: Final[dict[int, tuple[str, ...]]] = {}
"""The statements that take the layout from version k (the key) to k + 1."""

_OLD_RUNS: Final = (
    "SELECT run_id FROM runs WHERE schema_version < ?1 "
    "UNION SELECT run_id FROM events WHERE json_extract(body, '$.schema_version') < ?1 "
    "ORDER BY 1"
)


def migrate(db: sqlite3.Connection, store: str, dry_run: bool) -> MigrationReport:
    """Migrate the open file ``db`` (see the module docstring); ``dry_run`` writes nothing."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    before = int(row[0]) if row is not None else STORE_VERSION
    steps: list[str] = []
    for version in range(before, STORE_VERSION):
        steps.append(f"table layout {version} -> {version + 1}")
        if not dry_run:
            _transaction(db, functools.partial(_layout_step, db, version))
    old = [r[0] for r in db.execute(_OLD_RUNS, (SCHEMA_VERSION,)).fetchall()]
    rewritten = len(old) if dry_run else 0
    for run_id in old:
        if dry_run:
            steps.append(f"rewrite run {run_id!r} at record schema {SCHEMA_VERSION}")
            continue
        try:
            count = _transaction(db, functools.partial(_rewrite_run, db, run_id))
        except CorruptRunError as exc:
            steps.append(f"left run {run_id!r} as it is: {exc}")
            continue
        rewritten += 1
        steps.append(f"rewrote {count} record(s) of run {run_id!r} at schema {SCHEMA_VERSION}")
    total = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    if not steps:
        steps.append(f"nothing to do: layout {before}, every record at schema {SCHEMA_VERSION}")
    return MigrationReport(
        store=store, layout_before=before, layout_after=before if dry_run else STORE_VERSION,
        runs_checked=int(total), runs_rewritten=rewritten, steps=tuple(steps), dry_run=dry_run,
    )


def _transaction(db: sqlite3.Connection, work: Callable[[], int]) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    return result


def _layout_step(db: sqlite3.Connection, version: int) -> int:
    for statement in LAYOUT_STEPS[version]:
        db.execute(statement)
    db.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version' AND value = ?",
        (str(version + 1), str(version)),
    )
    return 0


def _rewrite_run(db: sqlite3.Connection, run_id: str) -> int:
    rows = db.execute(
        "SELECT seq, body FROM events WHERE run_id = ? AND "
        "json_extract(body, '$.schema_version') < ? ORDER BY seq",
        (run_id, SCHEMA_VERSION),
    ).fetchall()
    for seq, body in rows:
        text = encode_event(decode_event(run_id, seq, body))
        db.execute(
            "UPDATE events SET body = ? WHERE run_id = ? AND seq = ?", (text, run_id, seq)
        )
    db.execute(
        "UPDATE runs SET schema_version = ? WHERE run_id = ? AND schema_version < ?",
        (SCHEMA_VERSION, run_id, SCHEMA_VERSION),
    )
    return len(rows)
