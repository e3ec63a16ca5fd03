"""SqliteBackend's group commit: one compare-and-set for a batch's appends, savepoints only
when a write fails after changing rows, and each write still deciding alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import ConcurrentUpdateError, CorruptRunError, LeaseLostError
from durable_agent.fsm import RunState
from durable_agent.records import Lease, TransitionEvent
from tests.backends.conftest import new_run, run, step
from tests.backends.sqlite_raw import concurrent_appends, raw_db, trace


def _quiet(seq: int) -> TransitionEvent:
    """An event with no trigger: the run's state stays as it is."""
    return TransitionEvent(seq=seq, state=RunState.PENDING, trigger=None)


def test_a_batch_of_appends_makes_one_compare_and_set_and_no_savepoint(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            done = await concurrent_appends(store, 50)
            updates = [s for s in done.statements if "UPDATE runs" in s]
            assert len(updates) == done.commits, updates
            assert not any("SAVEPOINT" in s for s in done.statements)
            for lease, fresh in zip(done.leases, done.renewed, strict=True):
                assert fresh.generation == lease.generation
                assert fresh.owner == lease.owner
                assert fresh.expires_at >= lease.expires_at
            headers = await asyncio.gather(*(store.get_run(run_id) for run_id in done.ids))
            assert {(h.seq, h.state) for h in headers} == {(2, RunState.MODEL_CALL)}

    run(main())


def test_appends_with_and_without_a_trigger_and_empty_ones_share_a_batch(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            a, b, c, d = [await new_run(store, r) for r in "abcd"]
            outcomes = await asyncio.gather(
                store.append("a", [step(2)], expected_seq=1, lease=a),
                store.append("b", [_quiet(2)], expected_seq=1, lease=b),
                store.append("c", [], expected_seq=1, lease=c),
                store.append("d", [step(2), _quiet(3)], expected_seq=1, lease=d,
                             release=True),
            )
            assert all(isinstance(o, Lease) for o in outcomes)
            got = {r: await store.get_run(r) for r in "abcd"}
            assert (got["a"].seq, got["a"].state) == (2, RunState.MODEL_CALL)
            assert (got["b"].seq, got["b"].state) == (2, RunState.PENDING)
            assert (got["c"].seq, got["c"].state) == (1, RunState.PENDING)
            assert (got["d"].seq, got["d"].state) == (3, RunState.PENDING)
            assert got["d"].lease is None
            assert got["a"].lease is not None
            assert [e.seq for e in (await store.load_run("d")).events] == [1, 2, 3]

    run(main())


def test_an_append_whose_rows_collide_fails_alone_after_its_batch_is_replayed(
    db_path: Path,
) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            ids = [f"r{i}" for i in range(6)]
            leases = dict(zip(ids, [await new_run(store, r) for r in ids], strict=True))
            # A stray row at r3's next seq: its compare-and-set passes, its INSERT fails.
            with raw_db(db_path) as raw:
                raw.execute("INSERT INTO events (run_id, seq, body) VALUES ('r3', 2, '{}')")
            statements = await trace(store)
            outcomes = await asyncio.gather(
                *(store.append(r, [step(2)], expected_seq=1, lease=leases[r]) for r in ids),
                store.append("r0", [step(3, RunState.TOOL_EXEC)], expected_seq=2,
                             lease=leases["r0"]),
                return_exceptions=True,
            )
            assert type(outcomes[3]) is CorruptRunError, outcomes
            assert all(isinstance(o, Lease) for i, o in enumerate(outcomes) if i != 3)
            assert any("SAVEPOINT" in s for s in statements)  # the fallback ran
            assert (await store.get_run("r3")).seq == 1
            assert (await store.get_run("r0")).seq == 3
            for run_id in ids[1:3] + ids[4:]:
                assert (await store.load_run(run_id)).header.seq == 2

    run(main())


def test_refusals_in_one_batch_each_say_why_and_write_nothing(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            good, stale, taken = [await new_run(store, r) for r in ("good", "stale", "taken")]
            await store.append("stale", [step(2)], expected_seq=1, lease=stale)
            old = taken.model_copy(update={"generation": taken.generation - 1})
            statements = await trace(store)
            outcomes = await asyncio.gather(
                store.append("good", [step(2)], expected_seq=1, lease=good),
                store.append("stale", [step(2)], expected_seq=1, lease=stale),
                store.append("taken", [step(2)], expected_seq=1, lease=old),
                store.append("good", [step(5)], expected_seq=2, lease=good),  # seq gap
                return_exceptions=True,
            )
            assert isinstance(outcomes[0], Lease)
            assert type(outcomes[1]) is ConcurrentUpdateError
            assert type(outcomes[2]) is LeaseLostError
            assert isinstance(outcomes[3], ConcurrentUpdateError)
            assert (await store.get_run("good")).seq == 2
            assert (await store.get_run("stale")).seq == 2
            assert (await store.get_run("taken")).seq == 1
            # Refused in the group's check, not by replaying the batch write by write.
            assert not any("SAVEPOINT" in s for s in statements)

    run(main())


def test_a_cancellation_request_reaches_its_append_in_a_grouped_batch(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            leases = {r: await new_run(store, r) for r in ("a", "b", "c")}
            await store.request_cancel("b", "user pressed stop")
            statements = await trace(store)
            outcomes = await asyncio.gather(
                *(store.append(r, [step(2)], expected_seq=1, lease=leases[r]) for r in "abc")
            )
            assert [o.cancel_requested for o in outcomes] == [None, "user pressed stop", None]
            assert not any("SAVEPOINT" in s for s in statements)
            assert {(await store.get_run(r)).seq for r in "abc"} == {2}

    run(main())


def test_a_batch_larger_than_one_statement_splits_into_groups_and_stores_every_event(
    db_path: Path,
) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, max_batch=4096) as store:
            ids = [f"r{i:04d}" for i in range(1100)]  # over 1,024 appends and rows a statement
            leases = await asyncio.gather(*(new_run(store, run_id) for run_id in ids))
            commits_before = store._stats.commits
            renewed = await asyncio.gather(
                *(
                    store.append(run_id, [step(2), _quiet(3)], expected_seq=1, lease=lease)
                    for run_id, lease in zip(ids, leases, strict=True)
                )
            )
            assert store._stats.commits - commits_before == 1
            assert all(isinstance(lease, Lease) for lease in renewed)
            for run_id in (ids[0], ids[1023], ids[1024], ids[-1]):
                stored = await store.load_run(run_id)
                assert [e.seq for e in stored.events] == [1, 2, 3]
                assert stored.header.state is RunState.PENDING

    run(main())


def test_a_renewal_sets_no_indexed_lease_column_and_a_release_without_a_trigger_clears_it(
    db_path: Path,
) -> None:
    # SQLite updates every index on a column an UPDATE sets, changed or not: an
    # append with no trigger and no release sets neither the state nor the lease's
    # owner (the claims' partial indexes are on them); a release still clears it.
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            a, b = [await new_run(store, r) for r in "ab"]
            statements = await trace(store)
            await store.append("a", [_quiet(2)], expected_seq=1, lease=a)
            (update,) = [s for s in statements if "UPDATE runs" in s]
            assigned = update.split(" SET ", 1)[1].split(" FROM ", 1)[0]
            assert "lease_owner" not in assigned, assigned
            assert "state" not in assigned, assigned
            assert (await store.get_run("a")).lease is not None
            await store.append("b", [_quiet(2)], expected_seq=1, lease=b, release=True)
            assert (await store.get_run("b")).lease is None

    run(main())


def _written_indexes(conn: sqlite3.Connection, statement: str) -> set[str]:
    """The tables and indexes ``statement`` opens for writing, from its bytecode."""
    names = {page: name for name, page in conn.execute("SELECT name, rootpage FROM sqlite_master")}
    return {names[row[3]] for row in conn.execute(f"EXPLAIN {statement}") if row[1] == "OpenWrite"}


def test_a_state_move_keeps_the_lease_columns_and_leaves_the_leases_index_alone(
    db_path: Path,
) -> None:
    # An append with a trigger sets the state (runs_by_state and the claims'
    # indexes of the runs not at rest follow it) but not the lease's owner,
    # host and pid, which the WHERE matched: so SQLite leaves the indexes of
    # held leases (runs_leased, runs_held) as they are. A release still clears
    # them, and takes the run out of both.
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            a, b = [await new_run(store, r) for r in "ab"]
            statements = await trace(store)
            await store.append("a", [step(2)], expected_seq=1, lease=a)
            (update,) = [s for s in statements if "UPDATE runs" in s]
            assigned = update.split(" SET ", 1)[1].split(" FROM ", 1)[0]
            assert "state" in assigned, assigned
            assert "lease_owner" not in assigned, assigned
            assert "lease_host" not in assigned, assigned
            assert "lease_pid" not in assigned, assigned
            held = (await store.get_run("a")).lease
            assert held is not None
            assert (held.owner, held.host, held.pid) == (a.owner, a.host, a.pid)
            del statements[:]
            await store.append("b", [step(2)], expected_seq=1, lease=b, release=True)
            (release,) = [s for s in statements if "UPDATE runs" in s]
            assert (await store.get_run("b")).lease is None
        with raw_db(db_path) as conn:
            moved = _written_indexes(conn, update)
            assert not moved & {"runs_leased", "runs_held"}, moved
            assert {"runs_by_state", "runs_placed"} <= moved, moved
            assert {"runs_leased", "runs_held"} <= _written_indexes(conn, release)
            for index in ("runs_leased", "runs_held"):
                held = conn.execute(
                    f"SELECT run_id FROM runs INDEXED BY {index} WHERE lease_owner IS NOT NULL"
                ).fetchall()
                assert held == [("a",)], index

    run(main())
