"""``durable-agent migrate`` SIGKILLed half-way leaves an intact store; a re-run finishes it.

The store is the v1 SQLite file with its DONE run copied 1,000 times (a
migration that takes a while: one transaction per run). The child is killed
once the store shows some runs migrated (a store state is the barrier, not a
pause); every run must then read exactly as before the migration, and running
it again must finish it and then find nothing to do.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import SCHEMA_VERSION, StoredRun
from tests._barriers import wait_until
from tests.migrations import _migrate_helpers as helpers

DATA = Path(__file__).parent.parent / "data" / "v1"
COPIES = 1000


def grow(path: Path) -> list[str]:
    """Copy the v1 run ``done-1`` under new ids; return every run id."""
    with sqlite3.connect(path) as db:
        for i in range(COPIES):
            db.execute(
                "INSERT INTO runs SELECT ?, session_id, user_id, agent_name, state, seq, "
                "created_at + ?, updated_at, lease_owner, lease_host, lease_pid, "
                "lease_generation, lease_expires, lease_ttl, schema_version, cancel_requested "
                "FROM runs WHERE run_id = 'done-1'",
                (f"copy-{i:04d}", i / 1000),
            )
            db.execute(
                "INSERT INTO events SELECT ?, seq, body FROM events WHERE run_id = 'done-1'",
                (f"copy-{i:04d}",),
            )
        return [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY run_id")]


def migrated(path: Path) -> int:
    with sqlite3.connect(path, timeout=60) as db:
        row = db.execute("SELECT count(*) FROM runs WHERE schema_version = ?", (SCHEMA_VERSION,))
        return int(row.fetchone()[0])


def load_all(path: Path, run_ids: list[str]) -> dict[str, StoredRun]:
    return helpers.load_all(lambda: SqliteBackend(path), run_ids)


def migrate_command(path: Path) -> list[str]:
    return helpers.migrate_command(f"sqlite:///{path}")


def test_a_migration_killed_half_way_leaves_the_store_intact_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    shutil.copy(DATA / "runs.db", path)
    run_ids = grow(path)
    before = load_all(path, run_ids)

    proc = subprocess.Popen(
        migrate_command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: migrated(path) > 0, awaiting="the first migrated run",
                   processes=[proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    half = migrated(path)
    assert 0 < half < len(run_ids), "the kill should land half-way"

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert load_all(path, run_ids) == before  # half-migrated reads as unmigrated

    rerun = subprocess.run(migrate_command(path), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["runs_rewritten"] == len(run_ids) - half
    assert migrated(path) == len(run_ids)
    assert load_all(path, run_ids) == before

    again = subprocess.run(migrate_command(path), capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["runs_rewritten"] == 0
