"""What only SqliteBackend promises: group commit, a file shared by connections and
processes, damage isolated to one run, and a life across event loops."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from durable_agent.backend import Capability, LeaseOwner
from durable_agent.backends._sqlite_schema import STORE_VERSION
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunBusyError,
    RunNotFoundError,
    SchemaVersionError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests._barriers import DEADLINE, wait_until_async
from tests.backends.conftest import created, header, new_run, run, step


@contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the file, in autocommit mode, closed afterwards."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


async def _trace(store: SqliteBackend) -> list[str]:
    """Record every statement the store's connection runs from now on."""
    statements: list[str] = []
    await store._read(lambda db: db.set_trace_callback(statements.append))
    return statements


# -- group commit ---------------------------------------------------------------------------


def test_concurrent_appends_of_many_runs_share_one_commit(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            ids = [f"r{i:03d}" for i in range(200)]
            leases = await asyncio.gather(*(new_run(store, run_id) for run_id in ids))
            statements = await _trace(store)
            commits_before = store._stats.commits
            renewed = await asyncio.gather(
                *(
                    store.append(run_id, [step(2)], expected_seq=1, lease=lease)
                    for run_id, lease in zip(ids, leases, strict=True)
                )
            )
            assert all(isinstance(lease, Lease) for lease in renewed)
            commits = store._stats.commits - commits_before
            assert commits <= 4, f"200 appends took {commits} commits"
            assert statements.count("COMMIT") == commits
            loaded = await asyncio.gather(*(store.get_run(run_id) for run_id in ids))
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


# -- damage stays with its run --------------------------------------------------------------


def _two_runs(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            for run_id in ("bad", "good"):
                lease = await new_run(store, run_id)
                await store.append(run_id, [step(2)], expected_seq=1, lease=lease)

    run(main())


def test_a_corrupt_event_row_fails_only_its_run(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE events SET body = '{garbage' WHERE run_id = 'bad' AND seq = 2")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(CorruptRunError, match=r"'bad'.*seq 2") as caught:
                await store.load_run("bad")
            assert (caught.value.run_id, caught.value.seq) == ("bad", 2)
            assert (await store.load_run("good")).header.seq == 2
            assert {h.run_id for h in (await store.list_runs()).runs} == {"bad", "good"}

    run(main())


def test_an_event_written_by_a_newer_version_raises_schema_version_error(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        where = "WHERE run_id = 'bad' AND seq = 2"
        (body,) = conn.execute(f"SELECT body FROM events {where}").fetchone()
        newer = json.loads(body) | {"schema_version": 99, "kind": "from_the_future"}
        conn.execute(f"UPDATE events SET body = ? {where}", (json.dumps(newer),))

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(SchemaVersionError, match="upgrade") as caught:
                await store.load_run("bad")
            assert (caught.value.found, caught.value.seq) == (99, 2)
            assert (await store.load_run("good")).header.seq == 2

    run(main())


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("state", "'BOGUS'", CorruptRunError),
        ("created_at", "'yesterday'", CorruptRunError),
        ("schema_version", "99", SchemaVersionError),
    ],
)
def test_a_damaged_header_fails_only_its_run(
    db_path: Path, column: str, value: str, error: type[CorruptRunError]
) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute(f"UPDATE runs SET {column} = {value} WHERE run_id = 'bad'")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(error, match="'bad'") as caught:
                await store.get_run("bad")
            assert caught.value.seq is None
            with pytest.raises(error):
                await store.load_run("bad")
            lease = (await store.get_run("good")).lease
            assert lease is not None
            with pytest.raises(error):
                await store.append("bad", [step(3)], expected_seq=2, lease=lease)
            await store.append("good", [step(3)], expected_seq=2, lease=lease)
            assert [h.run_id for h in (await store.list_runs()).runs] == ["good"]
            # A damaged row never shortens a page or ends the listing early.
            page = await store.list_runs(limit=1)
            assert ([h.run_id for h in page.runs], page.next_cursor) == (["good"], None)

    run(main())


def test_a_missing_event_row_makes_the_run_corrupt(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM events WHERE run_id = 'bad' AND seq = 1")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(CorruptRunError, match="'bad'"):
                await store.load_run("bad")

    run(main())


# -- opening the file ----------------------------------------------------------------------------


def test_a_missing_directory_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "runs.db"
    store = SqliteBackend(path)

    async def main() -> None:
        with pytest.raises(StoreUnavailableError, match="create the directory") as caught:
            await store.get_run("r1")
        assert str(path) in str(caught.value)
        await store.close()

    run(main())
    assert not path.parent.exists()


def test_a_file_with_a_newer_table_layout_is_refused(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(STORE_VERSION + 1),)
        )

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(StoreUnavailableError, match="upgrade durable-agent"):
                await store.get_run("good")

    run(main())


def test_a_file_that_is_not_a_database_is_reported(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(StoreUnavailableError, match=str(db_path)):
                await store.get_run("r1")

    run(main())


@pytest.mark.parametrize(
    ("setting", "number"), [("OFF", 0), ("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)]
)
def test_synchronous_option_is_applied(db_path: Path, setting: Any, number: int) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, synchronous=setting) as store:
            pragmas = await store._read(
                lambda db: (
                    db.execute("PRAGMA synchronous").fetchone()[0],
                    db.execute("PRAGMA journal_mode").fetchone()[0],
                    db.execute("PRAGMA busy_timeout").fetchone()[0],
                )
            )
            assert pragmas == (number, "wal", 5000)

    run(main())


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((42,), {}, "db_file"),
        ((b"runs.db",), {}, "db_file"),
        ((":memory:",), {}, "MemoryBackend"),
        (("runs.db",), {"synchronous": "SOMETIMES"}, "synchronous"),
        (("runs.db",), {"synchronous": 2}, "synchronous"),
        (("runs.db",), {"busy_timeout": "5"}, "busy_timeout"),
        (("runs.db",), {"busy_timeout": -1}, "busy_timeout"),
        (("runs.db",), {"max_batch": 0}, "max_batch"),
        (("runs.db",), {"max_batch": 1.5}, "max_batch"),
        (("runs.db",), {"session_id": 7}, "session_id"),
    ],
)
def test_bad_options_raise_configuration_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SqliteBackend(*args, **kwargs)


def test_construction_needs_no_event_loop_and_touches_no_file(tmp_path: Path) -> None:
    store = SqliteBackend(db_file=tmp_path / "runs.db", session_id="s1", user_id="u1")
    assert not (tmp_path / "runs.db").exists()
    assert store.capabilities >= {
        Capability.CROSS_PROCESS,
        Capability.GROUP_COMMIT,
        Capability.DURABLE,
    }
    lower: Any = "normal"
    assert SqliteBackend(tmp_path / "x.db", synchronous=lower)._synchronous == "NORMAL"
    run(store.close())


# -- event loops and lifetime ----------------------------------------------------------------------


def _wait_for_threads(count: int) -> int:
    deadline = time.monotonic() + DEADLINE
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def test_one_backend_works_across_successive_asyncio_runs(db_path: Path) -> None:
    threads = threading.active_count()
    store = SqliteBackend(db_path)
    lease = run(new_run(store, "r1"))
    # The loop that ended closed its connection: nothing is left running.
    assert _wait_for_threads(threads) == threads
    lease = run(store.append("r1", [step(2)], expected_seq=1, lease=lease))
    run(store.append("r1", [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease))
    assert run(store.load_run("r1")).header.seq == 3
    run(store.close())
    assert _wait_for_threads(threads) == threads


_MODULE_LEVEL = """
import asyncio, sys
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import CreatedEvent, RunHeader, UserMessage

db = SqliteBackend(db_file=sys.argv[1], session_id="s1", user_id="u1")
event = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))
asyncio.run(db.create_run(RunHeader(run_id="r1", seq=1), [event]))
print(asyncio.run(db.get_run("r1")).seq)
"""


def test_a_module_level_backend_never_closed_lets_the_process_exit(db_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _MODULE_LEVEL, str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "1", "")


def test_a_backend_dropped_with_its_connection_open_warns(db_path: Path) -> None:
    async def main() -> None:
        held = [SqliteBackend(db_path)]
        await held[0].create_run(header("r1"), [created()])
        link = held[0]._link
        assert link is not None
        # The only reference goes, and the backend with it: it is in no reference cycle.
        with pytest.warns(ResourceWarning, match="close"):
            held.clear()
        await wait_until_async(
            lambda: link.closed, awaiting="the cancelled writer to close the connection"
        )

    run(main())
