"""``durable-agent migrate`` on PostgreSQL: SIGKILLed half-way, re-run, two at once, live writers.

The store is the v1 PostgreSQL layout (`tests.migrations.v1_postgres`) with its
DONE run copied 300 times: a migration that takes a while, one transaction
per run. The child is killed once the store shows some runs migrated (a store
state is the barrier, not a pause); every run must then read exactly as
before, a re-run must finish the job, and a third run find nothing to do. Two
migrators started together must not overlap: the advisory lock makes the
second wait, and between them each run is rewritten once. Writers appending
to runs while they are rewritten are never refused and lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from durable_agent.backend import LeaseOwner, MigrationReport
from durable_agent.backends import _postgres_schema as layout
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import StoreUnavailableError
from durable_agent.fsm import RunState
from durable_agent.records import (
    SCHEMA_VERSION,
    CreatedEvent,
    RunHeader,
    StoredRun,
    UserMessage,
)
from durable_agent.testing.conformance import step
from tests._barriers import wait_until
from tests.backends.postgres_server import URL, admin, drop, new_schema
from tests.migrations import _migrate_helpers as helpers
from tests.migrations.v1_postgres import migrated, write_v1_store

COPIES = 300


@pytest.fixture
def schema() -> Iterator[str]:
    admin("SELECT 1")
    name = new_schema()
    yield name
    drop(name)


def load_all(schema: str, run_ids: list[str]) -> dict[str, StoredRun]:
    return helpers.load_all(lambda: PostgresBackend(URL, schema=schema), run_ids)


def migrate_command(schema: str) -> list[str]:
    return helpers.migrate_command(f"{URL}?schema={schema}")


def test_a_postgres_migration_killed_half_way_leaves_the_store_intact_and_a_rerun_finishes(
    schema: str,
) -> None:
    run_ids = write_v1_store(URL, schema, copies=COPIES)
    before = load_all(schema, run_ids)

    proc = subprocess.Popen(
        migrate_command(schema), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: migrated(URL, schema, SCHEMA_VERSION) > 0,
                   awaiting="the first migrated run", processes=[proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    half = migrated(URL, schema, SCHEMA_VERSION)
    assert 0 < half < len(run_ids), "the kill should land half-way"
    assert load_all(schema, run_ids) == before  # half-migrated reads as unmigrated

    rerun = subprocess.run(migrate_command(schema), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["supported"] is True
    assert (report["layout_before"], report["layout_after"]) == (layout.STORE_VERSION,) * 2
    assert report["runs_checked"] == len(run_ids)
    assert report["runs_rewritten"] == len(run_ids) - half
    assert migrated(URL, schema, SCHEMA_VERSION) == len(run_ids)
    assert load_all(schema, run_ids) == before
    admin(  # every stored event body is now of this version
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM {schema}.events WHERE "
        f"(body::json->>'schema_version')::int <> {SCHEMA_VERSION}) THEN "
        "RAISE EXCEPTION 'an event was left at an older version'; END IF; END $$"
    )

    again = subprocess.run(migrate_command(schema), capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["runs_rewritten"] == 0


def test_two_postgres_migrations_at_once_never_overlap(schema: str) -> None:
    run_ids = write_v1_store(URL, schema, copies=COPIES // 2)
    before = load_all(schema, run_ids)
    procs = [
        subprocess.Popen(
            migrate_command(schema), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    # The lock serializes them: one rewrites every run, the other waited and found none.
    assert sorted(r["runs_rewritten"] for r in reports) == [0, len(run_ids)]
    waited = [r for r in reports if r["runs_rewritten"] == 0]
    assert waited[0]["steps"][0] == "waited for another migration of this schema to finish" or (
        # The second may have started after the first had finished.
        waited[0]["steps"][0].startswith("nothing to do")
    )
    assert migrated(URL, schema, SCHEMA_VERSION) == len(run_ids)
    assert load_all(schema, run_ids) == before


def test_a_postgres_migration_beside_live_writers_refuses_no_append_and_loses_none(
    schema: str,
) -> None:
    run_ids = write_v1_store(URL, schema, copies=300)
    written = [f"copy-{i:04d}" for i in range(0, 300, 15)]  # spread over the migration

    async def main() -> tuple[dict[str, int], int]:
        async with (
            PostgresBackend(URL, schema=schema) as writer,
            PostgresBackend(URL, schema=schema) as migrator,
        ):
            leases = {r: await writer.acquire_lease(r, LeaseOwner.current(), ttl=300)
                      for r in written}
            seqs = {r: (await writer.get_run(r)).seq for r in written}
            migration = asyncio.ensure_future(migrator.migrate())

            async def write(run_id: str) -> None:
                rounds = 0
                while rounds < 3 or not migration.done():  # appends before, during, after
                    seq = seqs[run_id] + 1
                    leases[run_id] = await writer.append(
                        run_id, [step(seq)], expected_seq=seq - 1, lease=leases[run_id]
                    )
                    seqs[run_id] = seq
                    rounds += 1

            await asyncio.gather(*(write(r) for r in written))
            report = await migration
            return seqs, report.runs_rewritten

    seqs, rewritten = asyncio.run(main())
    assert rewritten == len(run_ids)
    runs = load_all(schema, run_ids)
    for run_id, seq in seqs.items():
        assert runs[run_id].header.seq == seq  # every acknowledged append is stored
        assert [e.seq for e in runs[run_id].events] == list(range(1, seq + 1))
    assert migrated(URL, schema, SCHEMA_VERSION) == len(run_ids)


def test_each_postgres_layout_step_commits_with_its_version_row(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_v1_store(URL, schema)
    now = layout.STORE_VERSION  # the real steps up to it run first, from layout 1
    good = ("ALTER TABLE {schema}.runs ADD COLUMN note TEXT",)
    bad = ("ALTER TABLE {schema}.runs ADD COLUMN oops",)
    monkeypatch.setitem(layout.MIGRATIONS, now + 1, good)
    monkeypatch.setitem(layout.MIGRATIONS, now + 2, bad)
    monkeypatch.setattr(layout, "STORE_VERSION", now + 2)

    async def migrate() -> MigrationReport:
        async with PostgresBackend(URL, schema=schema) as db:
            return await db.migrate()

    with pytest.raises(StoreUnavailableError, match=r"migration failed.*run it again"):
        asyncio.run(migrate())
    with psycopg.connect(URL) as conn:  # step now+1 is whole; now+2 left nothing behind
        rows = conn.execute(f"SELECT version FROM {schema}.store_version").fetchall()
        assert rows == [(now + 1,)]
        assert conn.execute(f"SELECT count(note) FROM {schema}.runs").fetchall() == [(0,)]
    monkeypatch.setitem(
        layout.MIGRATIONS, now + 2, ("ALTER TABLE {schema}.runs ADD COLUMN oops INT",)
    )
    report = asyncio.run(migrate())
    assert (report.layout_before, report.layout_after) == (now + 1, now + 2)
    assert report.steps[0] == f"table layout {now + 1} -> {now + 2}"
    assert report.runs_rewritten == 4


def test_a_layout_1_store_gets_the_split_claimable_indexes_and_claims_through_them(
    schema: str,
) -> None:
    write_v1_store(URL, schema)

    first = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))

    async def claim() -> list[str]:
        async with PostgresBackend(URL, schema=schema) as db:
            report = await db.migrate()
            assert "table layout 1 -> 2" in report.steps
            await db.create_run(RunHeader(run_id="new-1", agent_name="agent", seq=1), [first])
            claimed = await db.claim_runs(LeaseOwner.current(), agents=["agent"], limit=10)
            return [c.header.run_id for c in claimed]

    assert asyncio.run(claim()) == ["new-1"]  # the v1 runs are all at rest
    with psycopg.connect(URL) as conn:
        names = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            ).fetchall()
        }
    assert {"runs_claimable_free", "runs_claimable_held", "runs_placed"} <= names
    assert "runs_claimable" not in names  # the single index of layout 1 is gone
