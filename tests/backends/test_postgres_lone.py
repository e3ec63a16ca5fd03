"""PostgreSQL lone writes: committed by their caller's task, straight on libpq.

The group-commit writer hands a write to its own task only when there is
something to share a commit with; a write that finds it idle is committed by
its caller, and a statement of scalars goes straight on libpq
(`durable_agent.backends._postgres_wire`). Batching, order and cancellation
stay as they were.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from durable_agent.backends import _postgres_wire as wire
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import StoreUnavailableError
from durable_agent.records import Lease
from durable_agent.testing.conformance import new_run, step
from tests.backends.conftest import run
from tests.backends.postgres_server import pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]

DEADLINE = 30.0


async def _appended(store: PostgresBackend, run_id: str, lease: Lease, seq: int) -> Lease:
    return await store.append(run_id, [step(seq + 1)], expected_seq=seq, lease=lease)


def test_a_lone_append_is_committed_by_its_caller_straight_on_libpq(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            lease = await new_run(store, "lone")
            before = (store.stats.direct, store.stats.wire, store.stats.batches)
            for seq in range(1, 6):
                lease = await _appended(store, "lone", lease, seq)
            assert (store.stats.direct, store.stats.wire, store.stats.batches) == (
                before[0] + 5, before[1] + 5, before[2] + 5,
            )
            stored = await store.load_run("lone")
            assert [e.seq for e in stored.events] == [1, 2, 3, 4, 5, 6]
            assert stored.header.lease is not None
            assert stored.header.lease.expires_at == lease.expires_at

    run(main())


def test_writes_queued_in_the_same_pass_as_a_lone_one_still_share_its_batch(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = {f"r{i}": await new_run(store, f"r{i}") for i in range(8)}
            before = (store.stats.batches, store.stats.direct)
            await asyncio.gather(*(_appended(store, r, le, 1) for r, le in leases.items()))
            # The first found the writer idle, but the others came in the same
            # pass of the loop: one batch, committed by the writer's task.
            assert (store.stats.batches, store.stats.direct) == (before[0] + 1, before[1])

    run(main())


async def _blocked(store: PostgresBackend, run_id: str) -> tuple[Any, asyncio.Task[Lease]]:
    """Lock ``run_id``'s row from another session and start an append that waits on it.

    Returns once the server shows the writer's session waiting for that lock.
    """
    link = await store._connected()
    assert link.writer.conn is not None
    writer_pid = link.writer.conn.info.backend_pid
    blocker = await psycopg.AsyncConnection.connect(store.url)
    await blocker.execute(
        f"SELECT 1 FROM {store.schema}.runs WHERE run_id = %s FOR UPDATE", (run_id,)
    )
    lease = (await store.get_run(run_id)).lease
    assert lease is not None
    task = asyncio.ensure_future(_appended(store, run_id, lease, 1))
    deadline = time.monotonic() + DEADLINE
    while True:
        cur = await blocker.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (writer_pid,)
        )
        if (await cur.fetchone()) == ("Lock",):
            return blocker, task
        assert time.monotonic() < deadline, "the append never reached the server"
        assert not task.done(), task


def test_writes_made_while_a_lone_one_is_in_flight_wait_and_share_the_next_batch(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await new_run(store, "held")
            others = {f"o{i}": await new_run(store, f"o{i}") for i in range(5)}
            before = store.stats.batches
            blocker, lone = await _blocked(store, "held")
            queued = [
                asyncio.ensure_future(_appended(store, r, le, 1)) for r, le in others.items()
            ]
            link = await store._connected()
            deadline = time.monotonic() + DEADLINE
            while len(link.writer.pending) < len(queued):
                assert time.monotonic() < deadline
                await asyncio.sleep(0)  # let the appends queue (no I/O of theirs can run)
            assert not any(t.done() for t in queued), "a write overtook the one in flight"
            await blocker.commit()
            await blocker.close()
            await lone
            await asyncio.gather(*queued)
            assert store.stats.batches - before == 2  # the lone one, then all the others
            for run_id in (*others, "held"):
                assert (await store.get_run(run_id)).seq == 2

    run(main())


def test_a_caller_cancelled_during_its_lone_write_never_cuts_the_statement(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await new_run(store, "cut")
            blocker, task = await _blocked(store, "cut")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # at once: the statement is still waiting on the server
            assert (await store.get_run("cut")).seq == 1
            await blocker.commit()
            await blocker.close()
            # Sent before the cancellation, the append runs to its end and commits.
            deadline = time.monotonic() + DEADLINE
            while (header := await store.get_run("cut")).seq != 2:
                assert time.monotonic() < deadline, "the cancelled append was cut"
            # The connection is clean: the next write (reading the stored lease) goes on.
            assert header.lease is not None
            await _appended(store, "cut", header.lease, 2)
            assert [e.seq for e in (await store.load_run("cut")).events] == [1, 2, 3]

    run(main())


def test_the_wire_path_gives_the_rows_and_errors_psycopg_gives(postgres_url: str) -> None:
    statement = (
        "SELECT %(i)s::int + 1, %(f)s::float8, %(t)s, %(b)s, %(n)s::text, %(i)s::text"
    )
    params = {"i": 41, "f": 0.1 + 0.2, "t": "naïve ✓", "b": True, "n": None}

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            plan = wire.plan(statement)
            assert plan is not None
            assert plan.names == ("i", "f", "t", "b", "n")
            line = wire.Wire(conn)
            encoded = line.encode(plan, params)
            assert encoded is not None
            got = await line.run(plan, *encoded)
            expected = await (await conn.execute(statement, params)).fetchall()
            assert got == expected == [(42, 0.30000000000000004, "naïve ✓", True, None, "41")]
            failing = wire.plan("SELECT 1 / %(zero)s")
            assert failing is not None
            encoded = line.encode(failing, {"zero": 0})
            assert encoded is not None
            with pytest.raises(psycopg.errors.DivisionByZero):
                await line.run(failing, *encoded)
            # The connection is usable after the error.
            assert await line.run(plan, *line.encode(plan, params) or ([], ())) == got
        finally:
            await conn.close()

    run(main())


def test_only_statements_of_scalars_go_on_the_wire(postgres_url: str) -> None:
    assert wire.plan("SELECT %(a)s, %(a)s") is not None
    assert wire.plan("SELECT %(a)b") is None  # a binary placeholder: psycopg's
    assert wire.plan("SELECT %s") is None
    assert wire.plan("SELECT '100%%'") is None
    plan = wire.plan("SELECT %(a)s")
    assert plan is not None
    assert plan.text == b"SELECT $1"

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            line = wire.Wire(conn)
            assert line.encode(plan, {"a": [1, 2]}) is None
            assert line.encode(plan, {"a": "nul\x00"}) is None  # psycopg refuses it itself
            assert line.encode(plan, {}) is None  # psycopg says which is missing
            assert line.encode(plan, {"a": 3}) == ([b"3"], (20,))
            assert line.encode(plan, {"a": False}) == ([b"f"], (16,))
            assert line.encode(plan, {"a": None}) == ([None], (0,))
            assert line.encode(plan, {"a": 2**63}) is None  # numeric for psycopg
            assert line.encode(plan, {"a": "\udcff"}) is None  # psycopg raises its own error
            assert line.encode(plan, {"a": float("inf")}) == ([b"inf"], (701,))
        finally:
            await conn.close()

    run(main())


def test_a_run_id_psycopg_refuses_fails_the_write_as_it_did(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            lease = await new_run(store, "fine")
            with pytest.raises(StoreUnavailableError, match="NUL"):
                await store.renew_lease("bad\x00id", lease)
            await store.renew_lease("fine", lease)  # the connection goes on

    run(main())


def test_the_writer_sees_whether_a_callback_waits_to_run_before_it() -> None:
    """A lone write skips its pass of the loop only when nothing could join its batch."""
    from durable_agent.backends._postgres_writer import _callbacks_waiting

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        seen = [_callbacks_waiting(loop)]
        handle = loop.call_soon(lambda: None)
        seen.append(_callbacks_waiting(loop))
        handle.cancel()  # a cancelled handle never runs: nothing waits
        seen.append(_callbacks_waiting(loop))
        return seen

    assert asyncio.run(main()) == [False, True, False]


def test_a_writer_connection_the_server_ended_fails_one_write_and_the_next_reconnects(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            lease = await _appended(store, "ended", await new_run(store, "ended"), 1)
            link = await store._connected()
            assert link.writer.conn is not None
            pid = link.writer.conn.info.backend_pid
            admin = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
            try:
                await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                deadline = time.monotonic() + DEADLINE
                while (await (await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                )).fetchone()) != (0,):
                    assert time.monotonic() < deadline, "the server never ended the session"
            finally:
                await admin.close()
            with pytest.raises(StoreUnavailableError, match="may or may not be stored"):
                await _appended(store, "ended", lease, 2)
            header = await store.get_run("ended")
            assert header.seq == 2  # it was not: the session was gone before it was sent
            assert header.lease is not None
            await _appended(store, "ended", header.lease, 2)  # on a new connection
            assert (await store.get_run("ended")).seq == 3

    run(main())
