"""PostgresBackend's claims: the sweep for lapsed leases, and claims that fill their limit.

A sweep looks at a window of the held runs after the last one's end (not all of
them), and at the runs of dead owners through runs_leased: its cost does not
grow with the leases in flight, and a lapsed run deep behind live ones is still
reached. A claim's ``FOR UPDATE SKIP LOCKED`` passes over rows another
transaction holds and takes the next: it never comes back short for them.
"""

from __future__ import annotations

import pytest

from durable_agent.backend import ClaimedRun, LeaseOwner
from durable_agent.backends import _postgres_claims as claims
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.testing._conformance_places import lapse
from durable_agent.testing.conformance import at, created, header
from tests.backends.conftest import run
from tests.backends.postgres_server import pg_schema, postgres_url
from tests.backends.test_postgres_claim_plans import _cte, _explain_claim, _held_scans

__all__ = ["pg_schema", "postgres_url"]

ELSEWHERE = LeaseOwner(host="another-host", pid=1)


@pytest.fixture
def every_claim_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claim sweeps, with a window of 4 held runs."""
    monkeypatch.setattr(claims, "_SWEEP_EVERY", 0.0)
    monkeypatch.setattr(claims, "SWEEP_WINDOW", 4)


async def _held(store: PostgresBackend, count: int, owner: LeaseOwner = ELSEWHERE) -> None:
    """``count`` runs held by ``owner`` for 300 s, the oldest of the store (held-00 first)."""
    for i in range(count):
        await store.create_run(header(f"held-{i:02}", created_at=at(i)), [created()])
        await store.acquire_lease(f"held-{i:02}", owner, ttl=300)


async def _until_taken(
    store: PostgresBackend, run_id: str, *, claims_at_most: int
) -> tuple[ClaimedRun, int]:
    """Claim one run at a time, putting free runs back, until ``run_id`` comes; and how many."""
    me = LeaseOwner(host="a-third-host", pid=1)
    for n in range(1, claims_at_most + 1):
        (got,) = await store.claim_runs(me, agents=["agent"], limit=1)
        if got.run_id == run_id:
            return got, n
        assert not got.takeover, got.run_id
        await store.release_lease(got.run_id, got.lease)  # free again, first in line
    raise AssertionError(f"{run_id} not claimed in {claims_at_most} claims")


def test_a_sweep_looks_at_one_window_of_the_held_runs_after_the_last(
    postgres_url: str, pg_schema: str
) -> None:
    async def fill() -> PostgresBackend:
        store = PostgresBackend(postgres_url, schema=pg_schema)
        await _held(store, 10)
        for i in range(3):  # each plan below claims one (ANALYZE runs the claim)
            await store.create_run(header(f"free-{i}", created_at=at(100 + i)), [created()])
        await store.close()
        return store

    store = run(fill())

    def window(after: tuple[int, float, str] | None) -> tuple[int, list[int]]:
        plan = _explain_claim(
            postgres_url, store, limit=1, max_running={}, sweep=True, after=after, window=4
        )
        assert int(plan["Plan"]["Actual Rows"]) == 1  # a free run (the meta row rides on it)
        return int(_cte(plan, "window_")["Actual Rows"]), _held_scans(plan)

    # Ten live leases, four at a time from the front or after a run; after the
    # last of them only the free runs the two plans before claimed (a short window:
    # the next starts at the front again). None walks the held runs in claim order.
    assert window(None) == (4, [0])
    assert window((0, at(3).timestamp(), "held-03")) == (4, [0])
    assert window((0, at(9).timestamp(), "held-09")) == (2, [0])


def test_a_run_lapsed_deep_behind_live_leases_is_taken_by_the_sweeps_window_by_window(
    postgres_url: str, pg_schema: str, every_claim_sweeps: None
) -> None:
    async def body() -> tuple[ClaimedRun, int]:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await _held(store, 10)
            mine = LeaseOwner.current()  # alive, registered nowhere: only its clock lapses
            await store.create_run(header("lapsed", created_at=at(20)), [created()])
            lease = await store.acquire_lease("lapsed", mine, ttl=300)
            for i in range(3):
                await store.create_run(header(f"free-{i}", created_at=at(30 + i)), [created()])
            await lapse(store, "lapsed", lease)
            assert store._link is not None
            store._link.sweep_after = None  # lapse's own claims moved it on
            return await _until_taken(store, "lapsed", claims_at_most=10)

    got, claims_made = run(body())
    assert got.takeover
    # The 11th held run in claim order, windows of four: the third sweep reaches it.
    assert claims_made == 3


def test_a_dead_workers_run_deep_behind_live_leases_is_taken_by_the_first_sweep(
    postgres_url: str, pg_schema: str, every_claim_sweeps: None
) -> None:
    async def body() -> tuple[ClaimedRun, int]:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await _held(store, 10)
            for i in range(3):
                await store.create_run(header(f"free-{i}", created_at=at(30 + i)), [created()])
            worker = LeaseOwner(host="a-fourth-host", pid=7)
            async with PostgresBackend(postgres_url, schema=pg_schema) as its_store:
                await its_store.register_worker(worker, ttl=300)
                await its_store.create_run(header("dead", created_at=at(20)), [created()])
                await its_store.acquire_lease("dead", worker, ttl=300)
                # The worker's session ends (as when its process is killed): its
                # advisory lock goes, its lease and registration have 300 s left.
                link = its_store._link
                assert link is not None
                await _terminate(postgres_url, link.liveness[worker.id].conn.info.backend_pid)
                return await _until_taken(store, "dead", claims_at_most=10)

    got, claims_made = run(body())
    assert got.takeover
    assert got.previous is not None
    assert got.previous.owner.startswith("a-fourth-host:7:")
    assert claims_made == 1


async def _terminate(url: str, pid: int) -> None:
    """End the server session ``pid`` and wait until the server has let it go."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))


def test_a_claim_passes_over_runs_another_transaction_locked_and_still_fills_its_limit(
    postgres_url: str, pg_schema: str
) -> None:
    import psycopg

    async def body() -> list[str]:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            for i in range(8):
                await store.create_run(header(f"r{i}", created_at=at(i)), [created()])
            async with await psycopg.AsyncConnection.connect(postgres_url) as other:
                # Another claimer's transaction holds the three oldest, locked, uncommitted.
                await other.execute(
                    f"SELECT run_id FROM {pg_schema}.runs WHERE run_id IN ('r0', 'r1', 'r2') "
                    "FOR UPDATE"
                )
                got = await store.claim_runs(
                    LeaseOwner(host="a-third-host", pid=1), agents=["agent"], limit=5
                )
                await other.rollback()
            return [c.run_id for c in got]

    assert run(body()) == ["r3", "r4", "r5", "r6", "r7"]


def test_the_claimer_runs_generic_plans_without_jit_and_asynchronous_commits(
    postgres_url: str, pg_schema: str
) -> None:
    # The session defaults say otherwise, so only the backend can have set them.
    url = f"{postgres_url}?options=-cjit%3Don%20-cplan_cache_mode%3Dauto"

    async def body() -> list[str]:
        async with PostgresBackend(url, schema=pg_schema) as store:
            link = await store._connected()
            async with link.claimer() as conn:
                settings = []
                for name in ("plan_cache_mode", "jit", "synchronous_commit"):
                    row = await (await conn.execute(f"SHOW {name}")).fetchone()
                    assert row is not None
                    settings.append(row[0])
                return settings

    assert run(body()) == ["force_generic_plan", "off", "off"]
