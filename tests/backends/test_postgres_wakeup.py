"""PostgresBackend's wake-up NOTIFY is best effort: a full queue never fails or loses a write.

PostgreSQL 15 cannot shrink its 8 GB notification queue at run time
(``max_notify_queue_pages`` arrived in 17) and filling it is not a test, so
these tests use the seam `_postgres_wakeup.USAGE`: the SQL that reads the
queue's usage is replaced, before the store opens, by a function of the
test's schema that reports a usage or raises what a full queue raises
(SQLSTATE 54000, ``too many notifications in the NOTIFY queue``). The error
then comes at the statement instead of at COMMIT; either way PostgreSQL rolls
the whole transaction back, which is what the writer must survive.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from durable_agent.backends import _postgres_wakeup as wakeup
from durable_agent.backends._postgres_claims import channel
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import ConcurrentUpdateError
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests._barriers import DEADLINE
from tests.backends.conftest import created, header, new_run, run, step
from tests.backends.postgres_server import admin, pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]



def _usage_function(schema: str, body: str) -> str:
    """Create ``schema.queue_usage()`` with a PL/pgSQL ``body``; return the SQL that calls it."""
    admin(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    admin(
        f"CREATE FUNCTION {schema}.queue_usage() RETURNS double precision "
        f"LANGUAGE plpgsql AS $$ BEGIN {body} END $$"
    )
    return f"{schema}.queue_usage()"


def test_a_full_notify_queue_fails_no_write_and_loses_no_event(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin(f"CREATE SCHEMA {pg_schema}")
    admin(f"CREATE SEQUENCE {pg_schema}.refused")
    monkeypatch.setattr(
        wakeup,
        "USAGE",
        _usage_function(
            pg_schema,
            # A sequence is not rolled back: it counts the refused commits.
            f"PERFORM nextval('{pg_schema}.refused'); "
            "RAISE EXCEPTION 'too many notifications in the NOTIFY queue' USING ERRCODE = '54000';",
        ),
    )

    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            # Creates notify: each one's commit is refused, then stored without it.
            leases: dict[str, Lease] = dict(
                zip(
                    [f"r{i}" for i in range(12)],
                    await asyncio.gather(*(new_run(store, f"r{i}") for i in range(12))),
                    strict=True,
                )
            )
            # Half come to rest (notifying, in shared batches), half take a step (not).
            calls = [
                store.append(
                    run_id,
                    [step(2, RunState.DONE if i % 2 else RunState.MODEL_CALL)],
                    expected_seq=1,
                    lease=lease,
                    release=bool(i % 2),
                )
                for i, (run_id, lease) in enumerate(leases.items())
            ]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, Lease) for o in outcomes), outcomes
            for i, run_id in enumerate(leases):
                loaded = await store.load_run(run_id)
                assert [e.seq for e in loaded.events] == [1, 2]
                assert loaded.header.state is (RunState.DONE if i % 2 else RunState.MODEL_CALL)
                assert (loaded.header.lease is None) is bool(i % 2)
            # The compare-and-set still holds on the retried path.
            stale = store.append("r0", [step(2)], expected_seq=1, lease=leases["r0"], release=True)
            with pytest.raises(ConcurrentUpdateError):
                await stale
            assert [e.seq for e in (await store.load_run("r0")).events] == [1, 2]
        # Every create and every append to rest had its commit refused at least once.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute(f"SELECT last_value FROM {pg_schema}.refused").fetchone()
        assert row is not None
        assert row[0] >= 12 + 6

    run(main())


async def _woken(url: str, schema: str, write: object) -> bool:
    """Whether the store's channel got a notification while ``write`` ran.

    A marker NOTIFY sent after the write is the barrier: one listener gets
    notifications in commit order, so a wake-up committed before the marker
    arrives first. The marker's channel is the test's own (its schema's): a
    marker from a test running beside it must not end this wait early.
    """
    marker = f"da_test_wakeup_marker_{schema}"
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with conn:
        await conn.execute(f'LISTEN "{channel(schema)}"')
        await conn.execute(f'LISTEN "{marker}"')
        await write  # type: ignore[misc]
        admin(f'NOTIFY "{marker}"')
        seen: list[str] = []
        async for note in conn.notifies(timeout=DEADLINE):
            seen.append(note.channel)
            if note.channel == marker:
                break
        assert marker in seen, f"no marker within {DEADLINE} s"
        return channel(schema) in seen


@pytest.mark.parametrize(
    ("usage", "woken", "warned"),
    [(None, True, False), (0.6, True, True), (0.95, False, True)],
    ids=["real-queue", "past-warning", "past-skip"],
)
def test_a_commit_wakes_waiters_below_the_skip_threshold_and_warns_past_half(
    postgres_url: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    usage: float | None,
    woken: bool,
    warned: bool,
) -> None:
    if usage is not None:
        monkeypatch.setattr(wakeup, "USAGE", _usage_function(pg_schema, f"RETURN {usage};"))

    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            with caplog.at_level(logging.WARNING, logger="durable_agent"):
                got = await _woken(
                    postgres_url, pg_schema, store.create_run(header("r1"), [created()])
                )
            assert got is woken
            assert (await store.get_run("r1")).seq == 1
            watch = (await store._connected()).writer.on_queue_usage
            assert isinstance(watch, wakeup.QueueWatch)
            assert watch.usage == (usage if usage is not None else pytest.approx(0.0, abs=0.4))

    run(main())
    warnings = [r.getMessage() for r in caplog.records if "NOTIFY queue" in r.getMessage()]
    if warned:
        assert len(warnings) == 1, warnings
        assert f"{round(usage * 100) if usage else 0}% full" in warnings[0]
        assert "pg_terminate_backend" in warnings[0]
    else:
        assert warnings == []


# -- no I/O -------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_queue_watch_warns_at_most_once_per_interval() -> None:
    now = [100.0]
    watch = wakeup.QueueWatch("the store", interval=60, clock=lambda: now[0])
    logger = logging.getLogger("durable_agent")
    handler = _Records()
    records = handler.records
    logger.addHandler(handler)
    try:
        watch(0.1)
        watch(0.7)
        now[0] += 30
        watch(0.8)
        now[0] += 31
        watch(0.95)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage().split("; ")[0] for r in records] == [
        "PostgreSQL store the store: the server's NOTIFY queue is 70% full",
        "PostgreSQL store the store: the server's NOTIFY queue is 95% full",
    ]
    assert "wake-ups are skipped" in records[1].getMessage()
    assert watch.usage == 0.95


def test_only_a_full_notify_queue_counts_as_one() -> None:
    full = psycopg.errors.ProgramLimitExceeded("too many notifications in the NOTIFY queue")
    assert wakeup.is_queue_full(full)
    assert not wakeup.is_queue_full(psycopg.errors.UniqueViolation("duplicate key"))
    assert not wakeup.is_queue_full(ValueError("54000"))
