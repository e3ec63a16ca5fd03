"""A client frozen mid-transaction does not keep a run from being claimed for long.

The group-commit writer sends each batch in one message, so it never leaves a
transaction waiting on it (test_postgres.py); a client stopped inside a
transaction all the same (SIGSTOP, a paused VM) leaves it open with the run
rows it locked, and claims skip locked rows (``FOR UPDATE SKIP LOCKED``).
Every connection of the backend runs with ``idle_in_transaction_session_timeout``
(`PostgresBackend(idle_in_transaction_timeout=...)`), so the server ends the
frozen session and another process claims the run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from durable_agent.backend import LeaseOwner
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import ConfigurationError
from durable_agent.testing._conformance_claims import submit
from tests._barriers import DEADLINE, wait_for_path, wait_until
from tests.backends.conftest import run
from tests.backends.postgres_server import pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]

CHILD = Path(__file__).with_name("postgres_frozen_child.py")


def _session_state(url: str, pid: int) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return None if row is None else str(row[0])


def test_a_claim_gets_a_run_locked_by_a_frozen_client_once_its_session_times_out(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    async def claim() -> list[str]:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            got = await store.claim_runs(LeaseOwner.current(), agents=["agent"])
            return [c.header.run_id for c in got]

    async def create() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await submit(store, "r1")

    run(create())
    barrier = tmp_path / "frozen"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), postgres_url, pg_schema, "r1", "2", str(barrier)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_path(barrier, awaiting="the child to lock the run and freeze", processes=[child])
        pid = int(barrier.read_text())
        wait_until(lambda: child.poll() is None and _stopped(child.pid),
                   awaiting="the child to stop itself")
        before = _session_state(postgres_url, pid)
        skipped = run(claim())
        after = _session_state(postgres_url, pid)
        if before == after == "idle in transaction":
            # The session held its lock throughout the claim: the row was skipped.
            assert skipped == []
        claimed: list[str] = skipped
        end_state: list[str | None] = []

        def claimed_it() -> bool:
            claimed.extend(run(claim()))
            return bool(claimed)

        wait_until(claimed_it, awaiting="a claim once the frozen session timed out")
        end_state.append(_session_state(postgres_url, pid))
        assert claimed == ["r1"]
        # Nobody but the server ended it: the child is still stopped.
        assert child.poll() is None
        assert end_state == [None], "the server ended the frozen client's session"
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=DEADLINE)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "T"


def test_every_connection_runs_with_the_idle_in_transaction_timeout(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> list[str]:
        async with PostgresBackend(
            postgres_url, schema=pg_schema, idle_in_transaction_timeout=7.5
        ) as store:
            link = await store._connected()
            assert link.writer.conn is not None
            shown = [
                (await (await link.writer.conn.execute(
                    "SHOW idle_in_transaction_session_timeout")).fetchall())[0][0]
            ]
            async with link.pool.connection() as conn:
                shown.append((await (await conn.execute(
                    "SHOW idle_in_transaction_session_timeout")).fetchall())[0][0])
            async with link.claimer() as conn:
                shown.append((await (await conn.execute(
                    "SHOW idle_in_transaction_session_timeout")).fetchall())[0][0])
            return shown

    assert run(main()) == ["7500ms"] * 3


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "10", 0.0001])
def test_a_bad_idle_in_transaction_timeout_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="idle_in_transaction_timeout"):
        PostgresBackend("postgresql://h/db", idle_in_transaction_timeout=bad)  # type: ignore[arg-type]


def test_an_idle_in_transaction_timeout_of_zero_turns_it_off(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> str:
        async with PostgresBackend(
            postgres_url, schema=pg_schema, idle_in_transaction_timeout=0
        ) as store:
            rows = await store._read("SHOW idle_in_transaction_session_timeout", ())
            return str(rows[0][0])

    assert run(main()) == "0"


