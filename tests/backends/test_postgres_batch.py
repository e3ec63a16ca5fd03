"""PostgreSQL group commit: each kind of write of a batch merges into one statement."""

from __future__ import annotations

import asyncio
from typing import Any

from durable_agent.backend import LeaseOwner
from durable_agent.backends._postgres_writer import Stats, Writer
from durable_agent.backends.postgres import PostgresBackend
from durable_agent.errors import LeaseLostError, RunBusyError, RunExistsError
from durable_agent.records import Lease
from durable_agent.testing.conformance import created, header, new_run, step
from tests.backends.conftest import run
from tests.backends.postgres_server import pg_schema, postgres_url

__all__ = ["pg_schema", "postgres_url"]


async def _runs(store: PostgresBackend, count: int) -> dict[str, Lease]:
    return {f"r{i:02}": await new_run(store, f"r{i:02}") for i in range(count)}


def test_renewals_of_many_runs_are_one_statement_and_a_refused_one_fails_alone(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = await _runs(store, 20)
            # r07's lease is taken over: its holder's renewal is refused by the fence.
            await store.acquire_lease(
                "r07", LeaseOwner.current(), ttl=30, takeover=leases["r07"].generation
            )
            before = (store.stats.batches, store.stats.statements, store.stats.writes)
            outcomes = await asyncio.gather(
                *(store.renew_lease(r, lease) for r, lease in leases.items()),
                return_exceptions=True,
            )
            batches = store.stats.batches - before[0]
            statements = store.stats.statements - before[1]
            assert store.stats.writes - before[2] == 20
            assert batches < 20, "the renewals never shared a commit"
            assert statements == batches  # one statement per batch, however many renewals
            for (run_id, lease), outcome in zip(leases.items(), outcomes, strict=True):
                if run_id == "r07":
                    assert isinstance(outcome, LeaseLostError), outcome
                    continue
                assert isinstance(outcome, Lease), outcome
                assert outcome.generation == lease.generation
                assert outcome.expires_at >= lease.expires_at
                stored = (await store.get_run(run_id)).lease
                assert stored is not None
                assert stored.expires_at == outcome.expires_at

    run(main())


def test_a_batch_of_appends_renewals_and_releases_is_one_statement_per_kind(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            leases = await _runs(store, 30)
            items = list(leases.items())
            first = store.renew_lease(*items[0])
            appends = [store.append(r, [step(2)], expected_seq=1, lease=le) for r, le in items[:10]]
            renewals = [store.renew_lease(r, le) for r, le in items[10:20]]
            releases = [store.release_lease(r, le) for r, le in items[20:]]
            before = (store.stats.batches, store.stats.statements)
            outcomes = await asyncio.gather(first, *appends, *renewals, *releases)
            batches = store.stats.batches - before[0]
            statements = store.stats.statements - before[1]
            # All queued before the writer's task runs: one batch, one statement
            # per kind (r00's append follows its renewal, in the next statement).
            assert (batches, statements) == (1, 3)
            assert all(isinstance(o, Lease) for o in outcomes[:21])
            for run_id, _ in items[:10]:
                assert (await store.get_run(run_id)).seq == 2
            for run_id, _ in items[20:]:
                assert (await store.get_run(run_id)).lease is None

    run(main())


def test_one_runs_writes_keep_their_order_across_the_merged_statements() -> None:
    """Each write goes to the first statement of its kind after its run's previous write.

    Two statements that share a merge are one kind (an append of one event and
    one of several).
    """

    async def main() -> list[tuple[str, list[tuple[str, str]]]]:
        loop = asyncio.get_running_loop()

        async def no_connection() -> Any:
            raise AssertionError("not connected in this test")

        def merge(kind: str) -> Any:
            return lambda params: (f"{kind} many", {"n": len(params)})

        appends = merge("append")
        writer = Writer(
            loop,
            no_connection,
            "test",
            256,
            Stats(),
            {"renew": merge("renew"), "append": appends, "append one": appends},
            notify="",
        )
        order = [
            ("A", "renew"),
            ("A", "append"),
            ("B", "append one"),
            ("B", "renew"),
            ("C", "renew"),
            ("C", "delete"),
            ("C", "renew"),
        ]
        for run_id, kind in order:
            writer.submit(run_id, kind, {"kind": kind, "run": run_id})
        writes = list(writer.pending)
        return [
            (query, [(w.run_id, w.query) for w in group])
            for query, _, group in writer._statements(writes)
        ]

    assert asyncio.run(main()) == [
        ("renew many", [("A", "renew"), ("C", "renew")]),
        ("append many", [("A", "append"), ("B", "append one")]),
        ("renew", [("B", "renew")]),  # after B's append
        ("delete", [("C", "delete")]),
        ("renew", [("C", "renew")]),  # after C's delete
    ]


def test_creates_and_acquisitions_of_many_runs_merge_and_a_refused_one_fails_alone(
    postgres_url: str, pg_schema: str
) -> None:
    async def main() -> None:
        async with PostgresBackend(postgres_url, schema=pg_schema) as store:
            await store.create_run(header("taken"), [created()])
            before = (store.stats.batches, store.stats.statements)
            outcomes = await asyncio.gather(
                *(store.create_run(header(f"c{i:02}"), [created()]) for i in range(12)),
                store.create_run(header("taken"), [created()]),  # already there
                return_exceptions=True,
            )
            assert outcomes[:12] == [None] * 12, outcomes
            assert isinstance(outcomes[12], RunExistsError)
            assert (store.stats.batches, store.stats.statements) == (before[0] + 1, before[1] + 1)
            for i in range(12):
                assert [e.seq for e in (await store.load_run(f"c{i:02}")).events] == [1]

            owner = LeaseOwner.current()
            other = LeaseOwner(host="another-host", pid=1)  # no pid check can see it
            held = await store.acquire_lease("c11", other, ttl=60)
            stale = await store.acquire_lease("c10", other, ttl=60)
            before = (store.stats.batches, store.stats.statements)
            outcomes = await asyncio.gather(
                *(store.acquire_lease(f"c{i:02}", owner, ttl=30) for i in range(10)),
                store.acquire_lease("c10", owner, ttl=30, takeover=stale.generation),
                store.acquire_lease("c11", owner, ttl=30),  # held by another owner: busy
                return_exceptions=True,
            )
            assert all(isinstance(o, Lease) for o in outcomes[:11]), outcomes
            assert isinstance(outcomes[11], RunBusyError)
            batches = store.stats.batches - before[0]
            assert (batches, store.stats.statements - before[1]) == (1, 1)
            assert outcomes[10].generation == stale.generation + 1  # taken over
            assert (await store.get_run("c11")).lease == held

    run(main())
