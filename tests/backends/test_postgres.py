"""PostgresBackend: the conformance suite, group commit, the server's clock, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durable_agent import Agent, ScriptedModel, redact
from durable_agent._redact import REDACTED
from durable_agent.backend import Backend, ClaimedRun, LeaseOwner
from durable_agent.backends import _postgres_schema as pg_schema_module
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunBusyError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.models.scripted import ScriptedFailure
from durable_agent.records import SCHEMA_VERSION, Lease
from durable_agent.registry import open_backend
from durable_agent.testing.conformance import BackendConformance, created, header, new_run, step
from tests._barriers import DEADLINE, wait_for_path
from tests.backends.conftest import run
from tests.backends.postgres_server import admin, drop, new_schema, pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]


class TestPostgresBackend(BackendConformance):
    async def backend(self, postgres_url: str) -> AsyncIterator[Backend]:
        schema = new_schema()
        store = PostgresBackend(postgres_url, schema=schema, session_id="s1", user_id="u1")
        try:
            yield store
            await store.close()
        finally:
            drop(schema)

    async def reopen(self, store: Backend) -> Backend:
        assert isinstance(store, PostgresBackend)
        return PostgresBackend(store.url, schema=store.schema)

    async def damage(self, store: Backend, run_id: str, seq: int | None) -> None:
        assert isinstance(store, PostgresBackend)
        if seq is None:
            admin(f"UPDATE {store.schema}.runs SET state = 'BOGUS' WHERE run_id = '{run_id}'")
        else:
            admin(
                f"UPDATE {store.schema}.events SET body = '{{garbage'"
                f" WHERE run_id = '{run_id}' AND seq = {seq}"
            )

    async def mark_newer_version(self, store: Backend, run_id: str) -> None:
        assert isinstance(store, PostgresBackend)
        admin(
            f"UPDATE {store.schema}.runs SET schema_version = {SCHEMA_VERSION + 1}"
            f" WHERE run_id = '{run_id}'"
        )


# -- group commit ------------------------------------------------------------------------


async def _runs(store: PostgresBackend, count: int) -> dict[str, Lease]:
    leases = {}
    for i in range(count):
        leases[f"r{i}"] = await new_run(store, f"r{i}")
    return leases


def test_concurrent_appends_of_many_runs_share_a_commit_and_a_refused_one_fails_alone(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = await _runs(store, 30)
            fenced = await new_run(store, "fenced")
            await store.acquire_lease(
                "fenced", LeaseOwner.current(), ttl=30, takeover=fenced.generation
            )
            before = (store.stats.batches, store.stats.writes)
            # Queued with the others: a stale seq on r0 (a second write of r0, so
            # another statement) and a fenced writer of its own run (in the merged one).
            calls = [
                store.append(run_id, [step(2)], expected_seq=1, lease=lease)
                for run_id, lease in leases.items()
            ]
            stale = store.append("r0", [step(6)], expected_seq=5, lease=leases["r0"])
            late = store.append("fenced", [step(2)], expected_seq=1, lease=fenced)
            outcomes = await asyncio.gather(*calls, stale, late, return_exceptions=True)
            assert all(isinstance(o, Lease) for o in outcomes[:-2]), outcomes
            assert isinstance(outcomes[-2], ConcurrentUpdateError)
            assert isinstance(outcomes[-1], LeaseLostError)
            batches = store.stats.batches - before[0]
            writes = store.stats.writes - before[1]
            assert writes == 32
            assert batches < writes / 4, f"{writes} writes took {batches} commits"
            for run_id in leases:
                loaded = await store.load_run(run_id)
                assert [e.seq for e in loaded.events] == [1, 2]
            assert (await store.load_run("fenced")).header.seq == 1

    run(main())


def test_a_statement_postgres_rejects_fails_its_write_alone_and_the_batch_commits(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = await _runs(store, 10)
            # An event row with no run: creating that run collides with it in SQL.
            admin(
                f"INSERT INTO {pg_schema}.events (run_id, seq, body) VALUES ('orphan', 1, '{{}}')"
            )
            calls = [
                store.append(run_id, [step(2)], expected_seq=1, lease=lease)
                for run_id, lease in leases.items()
            ]
            orphan = store.create_run(header("orphan"), [created()])
            outcomes = await asyncio.gather(*calls, orphan, return_exceptions=True)
            assert all(isinstance(o, Lease) for o in outcomes[:-1]), outcomes
            assert isinstance(outcomes[-1], CorruptRunError)
            assert "orphan" in str(outcomes[-1])
            assert store.stats.retried_alone >= 1
            with pytest.raises(RunNotFoundError):
                await store.get_run("orphan")
            for run_id in leases:
                assert (await store.get_run(run_id)).seq == 2

    run(main())


# -- the server's clock, synchronous_commit, the schema -------------------------------------


def test_lease_expiry_is_the_servers_clock_not_the_clients(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host's clock is an hour fast

    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await store.create_run(header("r1"), [created()])
            lease = await store.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            server_now = _server_now(postgres_url)
            assert 0 < lease.expires_at - server_now <= 30
            renewed = await store.append("r1", [step(2)], expected_seq=1, lease=lease)
            assert 0 < renewed.expires_at - _server_now(postgres_url) <= 30
            # Live on the server's clock, whatever this host's says.
            with pytest.raises(RunBusyError):
                await store.acquire_lease("r1", LeaseOwner.current(), ttl=30)

    run(main())


def _server_now(url: str) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])


def test_writes_commit_with_synchronous_commit_on_whatever_the_session_default(
    postgres_url: str, pg_schema: str
) -> None:
    # libpq's options= sets the session default to off; the backend turns it on.
    url = f"{postgres_url}?options=-csynchronous_commit%3Doff"

    async def main() -> None:
        async with PostgresBackend(url, schema=pg_schema) as store:
            await store.create_run(header("r1"), [created()])
            link = store._link
            assert link is not None
            assert link.writer.conn is not None
            cur = await link.writer.conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("on",)
            async with link.pool.connection() as conn:
                cur = await conn.execute("SHOW synchronous_commit")
                assert await cur.fetchone() == ("on",)

    run(main())


def test_every_writer_connection_runs_generic_plans_the_first_and_one_reopened(
    postgres_url: str, pg_schema: str
) -> None:
    # The server's default (auto) for the session, so only the backend can set it.
    url = f"{postgres_url}?options=-cplan_cache_mode%3Dauto"

    async def main() -> None:
        async with PostgresBackend(url, schema=pg_schema) as store:
            link = await store._connected()  # opens the link: its first connection makes the tables

            async def writers_mode() -> tuple[int, str]:
                conn = link.writer.conn
                assert conn is not None
                cur = await conn.execute("SHOW plan_cache_mode")
                row = await cur.fetchone()
                assert row is not None
                return conn.info.backend_pid, row[0]

            first_pid, mode = await writers_mode()
            assert mode == "force_generic_plan"
            await store.create_run(header("r1"), [created()])
            assert await writers_mode() == (first_pid, "force_generic_plan")
            # The server ends the writer's session: the next write fails, or
            # succeeds on a new connection; one after it is on a new connection.
            admin(f"SELECT pg_terminate_backend({first_pid}, 30000)")
            with contextlib.suppress(StoreUnavailableError):
                await store.create_run(header("r2"), [created()])
            await store.create_run(header("r3"), [created()])
            pid, mode = await writers_mode()
            assert pid != first_pid
            assert mode == "force_generic_plan"
            async with link.pool.connection() as conn:  # readers keep the session's default
                cur = await conn.execute("SHOW plan_cache_mode")
                assert await cur.fetchone() == ("auto",)

    run(main())


def test_the_schema_is_created_once_by_many_first_openers_and_versioned(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        stores = [PostgresBackend(postgres_url, schema=pg_schema) for _ in range(4)]
        try:
            await asyncio.gather(
                *(s.create_run(header(f"r{i}"), [created()]) for i, s in enumerate(stores))
            )
            assert len((await stores[0].list_runs()).runs) == 4
        finally:
            for store in stores:
                await store.close()

    run(main())
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(f"SELECT version FROM {pg_schema}.store_version").fetchall()
    assert rows == [(pg_schema_module.STORE_VERSION,)]


def test_an_older_store_is_migrated_forward_and_a_newer_one_is_refused_untouched(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def use() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await store.list_runs()

    run(use())
    now = pg_schema_module.STORE_VERSION
    step_next = ("ALTER TABLE {schema}.runs ADD COLUMN note TEXT",)
    monkeypatch.setitem(pg_schema_module.MIGRATIONS, now + 1, step_next)
    monkeypatch.setattr(pg_schema_module, "STORE_VERSION", now + 1)
    run(use())
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(f"SELECT note FROM {pg_schema}.runs").fetchall() == []
        rows = conn.execute(f"SELECT version FROM {pg_schema}.store_version").fetchall()
        assert rows == [(now + 1,)]
    monkeypatch.setattr(pg_schema_module, "STORE_VERSION", now)
    with pytest.raises(
        StoreUnavailableError, match=rf"layout version {now + 1}.*upgrade durable-agent"
    ):
        run(use())


# -- URLs and secrets ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_store_urls_open_a_postgres_backend_with_typed_options(
    scheme: str, postgres_url: str, pg_schema: str
) -> None:
    rest = postgres_url.split("://", 1)[1]
    store = open_backend(f"{scheme}://{rest}?schema={pg_schema}&max_batch=8", session_id="s")
    assert isinstance(store, PostgresBackend)
    assert (store.schema, store._max_batch, store.session_id) == (pg_schema, 8, "s")

    async def main() -> None:
        async with store:
            await store.create_run(header("r1"), [created()])
            assert (await store.get_run("r1")).run_id == "r1"

    run(main())


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql:///test", "names no PostgreSQL host"),
        ("postgresql://h/db?schema=no-dashes", "plain identifier"),
        ("postgresql://h/db?max_batch=0", "max_batch=0"),
    ],
)
def test_bad_postgres_urls_are_refused_with_the_reason(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        open_backend(url)


PASSWORD = "pg-Secret-7f3a9c2e"


def test_the_urls_password_is_marked_secret_and_reaches_no_error_or_stored_record(
    postgres_url: str, pg_schema: str
) -> None:
    host_part = postgres_url.split("://", 1)[1].split("@", 1)[1]
    url = f"postgresql://postgres:{PASSWORD}@{host_part}?schema={pg_schema}"
    store = open_backend(url)
    assert PASSWORD not in repr(store)
    assert redact(f"dsn {url}") == f"dsn {url.replace(PASSWORD, REDACTED)}"

    # A server that does not answer: the error names the store, never the password.
    dead = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_free_port()}/test?connect_timeout=1"

    async def unreachable() -> None:
        async with PostgresBackend(dead, connect_timeout=2) as other:
            await other.get_run("r1")

    with pytest.raises(StoreUnavailableError) as caught:
        run(unreachable())
    assert PASSWORD not in str(caught.value)

    # A model call failing with the URL in its message: neither the exception
    # raised nor the error stored on the run shows the password.
    boom = ScriptedFailure(0, RuntimeError(f"could not reach {url}"), 10**9)
    agent = Agent(ScriptedModel(["x"], failures=[boom]), db=store)
    with pytest.raises(Exception, match="could not reach") as failed:
        agent.do("go")
    assert PASSWORD not in str(failed.value)
    stored = run(_load_all(url))
    assert PASSWORD not in stored
    assert REDACTED in stored


async def _load_all(url: str) -> str:
    async with open_backend(url) as store:
        (only,) = (await store.list_runs()).runs
        loaded = await store.load_run(only.run_id)
    return loaded.model_dump_json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- liveness across hosts -----------------------------------------------------------------

_ANOTHER_HOST = """
import asyncio, sys
from durable_agent.backend import LeaseOwner
from durable_agent.backends.postgres import PostgresBackend

url, schema, ready = sys.argv[1:4]

async def main() -> None:
    store = PostgresBackend(url, schema=schema)
    me = LeaseOwner(host="another-host", pid=1)  # not this host: no pid check can see it
    await store.register_worker(me, ttl=300)
    claimed = await store.claim_runs(me, agents=["agent"], limit=2, ttl=300)
    assert len(claimed) == 2, claimed
    open(ready, "w").close()
    await asyncio.sleep(3600)  # killed here, holding both leases and its lock

asyncio.run(main())
"""


def test_a_sigkilled_workers_runs_are_claimed_at_once_by_its_lost_advisory_lock(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    async def submit() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            for run_id in ("r1", "r2"):
                await store.create_run(header(run_id), [created()])

    run(submit())
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", _ANOTHER_HOST, postgres_url, pg_schema, str(ready)],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_path(ready, awaiting="the other host's worker to claim both runs",
                      processes=[child])

        async def claim_after_kill() -> list[ClaimedRun]:
            async with PostgresBackend(postgres_url, schema=pg_schema) as store:
                me = LeaseOwner(host="a-third-host", pid=1)
                assert await store.claim_runs(me, agents=["agent"], limit=2) == []
                child.kill()
                child.wait(timeout=DEADLINE)
                # Leases and registration have 300 s left: only the lock tells.
                got: list[ClaimedRun] = []
                deadline = time.monotonic() + DEADLINE
                while len(got) < 2 and time.monotonic() < deadline:
                    got += await store.claim_runs(me, agents=["agent"], limit=2)
                    if len(got) < 2:
                        await store.wait_for_change(
                            await store.wait_for_change(None, timeout=0), timeout=0.2
                        )
                return got

        got = run(claim_after_kill())
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert sorted(c.run_id for c in got) == ["r1", "r2"]
    assert all(c.takeover and c.previous is not None for c in got)
    assert all(c.previous.owner.startswith("another-host:1:") for c in got if c.previous)
    assert all(c.lease.generation == 2 for c in got)


def test_a_batch_reaches_the_server_in_one_message_so_no_transaction_waits_on_the_client(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    """A client frozen or cut off mid-batch must not leave the server holding row locks.

    Sent as a pipeline (``BEGIN``, each statement, ``COMMIT``, flushed one by
    one), a batch froze between two messages left the session *active* with
    its rows locked, which no server timeout ends, and claims skip locked rows:
    a frozen worker's runs were never taken over (the many-hosts test). The
    client's side of the protocol, traced by libpq, shows one message per batch.
    """
    from psycopg.pq import Trace

    trace = tmp_path / "trace"

    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = await _runs(store, 6)
            conn = (await store._connected()).writer.conn
            assert conn is not None
            before = store.stats.batches
            with trace.open("w") as out:
                conn.pgconn.trace(out.fileno())
                conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
                renewals = [store.renew_lease(r, lease) for r, lease in leases.items()]
                stale = store.append("r0", [step(6)], expected_seq=5, lease=leases["r0"])
                outcomes = await asyncio.gather(*renewals, stale, return_exceptions=True)
                conn.pgconn.untrace()
            assert all(isinstance(o, Lease) for o in outcomes[:-1]), outcomes
            assert isinstance(outcomes[-1], ConcurrentUpdateError)  # refused, alone
            assert store.stats.batches - before < len(outcomes)  # some shared a commit

    run(main())
    text = trace.read_text()
    sent = re.findall(r"^F\t\d+\t(\w+)", text, flags=re.MULTILINE)  # the client's messages
    # The shared batch is one Query; a write alone is Parse ... Execute, Sync, sent together.
    assert "Query" in sent, sent
    assert "BEGIN" not in text
    assert "COMMIT" not in text
