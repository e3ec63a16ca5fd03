"""What only SqliteBackend promises, part one: group commit, and a file shared by
connections and processes (compare-and-set across them, a takeover that fences).

Damage, opening the file and a life across event loops are `test_sqlite_file.py`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent.backend import LeaseOwner
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import (
    ConcurrentUpdateError,
    LeaseLostError,
    RunBusyError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests._barriers import wait_until_async
from tests.backends.conftest import new_run, run, step
from tests.backends.sqlite_raw import concurrent_appends, raw_db

# -- group commit ---------------------------------------------------------------------------


def test_concurrent_appends_of_many_runs_share_one_commit(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            done = await concurrent_appends(store, 200)
            assert all(isinstance(lease, Lease) for lease in done.renewed)
            assert done.commits <= 4, f"200 appends took {done.commits} commits"
            assert done.statements.count("COMMIT") == done.commits
            loaded = await asyncio.gather(*(store.get_run(run_id) for run_id in done.ids))
            assert {h.seq for h in loaded} == {2}

    run(main())


def test_a_refused_append_fails_alone_and_the_rest_of_its_batch_commits(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            ids = [f"r{i}" for i in range(8)]
            opened = await asyncio.gather(*(new_run(store, run_id) for run_id in ids))
            leases = dict(zip(ids, opened, strict=True))
            # r0 moves on, so an append expecting seq 1 is stale; r1 is taken over.
            await store.append("r0", [step(2)], expected_seq=1, lease=leases["r0"])
            await store.acquire_lease("r1", LeaseOwner.current(), ttl=30, takeover=1)
            commits_before = store._stats.commits
            outcomes = await asyncio.gather(
                *(
                    store.append(run_id, [step(2)], expected_seq=1, lease=leases[run_id])
                    for run_id in ids
                ),
                store.append("ghost", [step(2)], expected_seq=1, lease=leases["r2"]),
                return_exceptions=True,
            )
            assert store._stats.commits - commits_before == 1
            assert type(outcomes[0]) is ConcurrentUpdateError
            assert type(outcomes[1]) is LeaseLostError
            assert type(outcomes[-1]) is RunNotFoundError
            assert all(isinstance(o, Lease) for o in outcomes[2:-1])
            assert (await store.get_run("r1")).seq == 1
            for run_id in ids[2:]:
                assert (await store.load_run(run_id)).header.seq == 2

    run(main())


def test_two_appends_of_one_run_in_one_batch_chain(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            lease = await new_run(store, "r1")
            commits_before = store._stats.commits
            await asyncio.gather(
                store.append("r1", [step(2)], expected_seq=1, lease=lease),
                store.append("r1", [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease),
            )
            assert store._stats.commits - commits_before == 1
            loaded = await store.load_run("r1")
            assert [e.seq for e in loaded.events] == [1, 2, 3]
            assert loaded.header.state is RunState.TOOL_EXEC

    run(main())


def test_a_store_failure_fails_every_write_of_the_batch_and_stores_none(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, busy_timeout=0.05) as store:
            leases = [await new_run(store, f"r{i}") for i in range(3)]
            with raw_db(db_path) as other:
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                outcomes = await asyncio.gather(
                    *(
                        store.append(f"r{i}", [step(2)], expected_seq=1, lease=lease)
                        for i, lease in enumerate(leases)
                    ),
                    return_exceptions=True,
                )
                other.execute("ROLLBACK")
            assert all(type(o) is StoreUnavailableError for o in outcomes)
            assert "busy_timeout" in str(outcomes[0])
            assert isinstance(outcomes[0], StoreUnavailableError)
            assert isinstance(outcomes[0].__cause__, sqlite3.OperationalError)
            assert {(await store.get_run(f"r{i}")).seq for i in range(3)} == {1}
            # The store works again once the lock is gone.
            await store.append("r0", [step(2)], expected_seq=1, lease=leases[0])

    run(main())


def test_a_write_cancelled_before_its_batch_started_is_not_stored(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, busy_timeout=5) as store:
            first = await new_run(store, "r1")
            second = await new_run(store, "r2")
            with raw_db(db_path) as other:
                other.execute("BEGIN IMMEDIATE")
                blocked = asyncio.create_task(
                    store.append("r1", [step(2)], expected_seq=1, lease=first)
                )
                link = store._link
                assert link is not None
                await wait_until_async(
                    # Set by the submit and still set while its batch runs: the
                    # write has left the queue for a batch that waits for the lock.
                    lambda: link.wakeup.is_set() and not link.pending,
                    awaiting="r1's batch to be waiting for the lock",
                )
                queued = asyncio.create_task(
                    store.append("r2", [step(2)], expected_seq=1, lease=second)
                )
                await asyncio.sleep(0)
                queued.cancel()
                await asyncio.sleep(0)
                other.execute("ROLLBACK")
            await blocked
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert (await store.get_run("r1")).seq == 2
            assert (await store.get_run("r2")).seq == 1

    run(main())


def test_close_commits_the_writes_already_queued(db_path: Path) -> None:
    async def main() -> None:
        store = SqliteBackend(db_path)
        lease = await new_run(store, "r1")
        pending = asyncio.create_task(store.append("r1", [step(2)], expected_seq=1, lease=lease))
        await asyncio.sleep(0)  # queued, not yet committed
        await store.close()
        assert isinstance(await pending, Lease)
        async with SqliteBackend(db_path) as reopened:
            assert (await reopened.get_run("r1")).seq == 2

    run(main())


# -- one file, many connections and processes ------------------------------------------------


def test_appends_are_durable_and_seen_by_a_new_backend_on_the_same_file(db_path: Path) -> None:
    async def main() -> None:
        first = SqliteBackend(db_path)
        lease = await new_run(first, "r1")
        await first.append("r1", [step(2)], expected_seq=1, lease=lease)
        second = SqliteBackend(db_path)  # while the first is still open
        assert (await second.load_run("r1")).header.seq == 2
        await first.close()
        await second.close()

    run(main())
    with raw_db(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE run_id = 'r1'").fetchone() == (2,)

    async def reopen() -> None:
        async with SqliteBackend(db_path) as third:
            loaded = await third.load_run("r1")
            assert loaded.header.state is RunState.MODEL_CALL
            assert [e.seq for e in loaded.events] == [1, 2]

    run(reopen())


def test_two_backends_on_one_file_compare_and_set_across_connections(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as a, SqliteBackend(db_path) as b:
            lease = await new_run(a, "r1")
            outcomes = await asyncio.gather(
                a.append("r1", [step(2, RunState.MODEL_CALL)], expected_seq=1, lease=lease),
                b.append("r1", [step(2, RunState.CANCELLED)], expected_seq=1, lease=lease),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(errors) == 1
            assert isinstance(errors[0], ConcurrentUpdateError)
            with pytest.raises(RunBusyError):
                await b.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert (await b.load_run("r1")).header.seq == 2

    run(main())


_TAKE_OVER = """
import asyncio, sys
from durable_agent.backend import LeaseOwner
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import TransitionEvent

async def main(path: str, generation: int) -> None:
    async with SqliteBackend(path) as store:
        owner = LeaseOwner.current()
        lease = await store.acquire_lease("r1", owner, ttl=30, takeover=generation)
        event = TransitionEvent(seq=2, state=RunState.MODEL_CALL, trigger="start")
        await store.append("r1", [event], expected_seq=1, lease=lease)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_another_process_takes_over_and_fences_this_one(db_path: Path) -> None:
    store = SqliteBackend(db_path)
    lease = run(new_run(store, "r1"))
    subprocess.run(
        [sys.executable, "-c", _TAKE_OVER, str(db_path), str(lease.generation)],
        check=True,
        timeout=60,
    )

    async def main() -> None:
        with pytest.raises(LeaseLostError):
            await store.append("r1", [step(2, RunState.CANCELLED)], expected_seq=1, lease=lease)
        loaded = await store.load_run("r1")
        assert loaded.header.lease_generation == lease.generation + 1
        assert loaded.events[-1].state is RunState.MODEL_CALL
        await store.close()

    run(main())
