"""Conformance tests of what counts toward ``max_running``: the runs holding a place.

`holds_place` is the rule every store follows: a run of the queue that is not
at rest and whose lease is held, live or lapsed, counts, until its lease is
released, it comes to rest, or a claim takes it over. `ClaimTests` includes
these tests; they check the count, not its atomicity (`AtomicQueueLimitTests`).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from durable_agent.backend import Backend, ClaimedRun, LeaseOwner
from durable_agent.errors import LeaseLostError
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from durable_agent.testing._conformance_base import BackendTestCase, at, created, header, step

__all__ = ["QueuePlaceTests", "claim_until", "lapse", "submit"]


async def submit(backend: Backend, run_id: str, **fields: object) -> None:
    """Store a PENDING run with no lease, as `Agent.submit_async` does."""
    await backend.create_run(header(run_id, **fields), [created()])


async def claim_until(
    backend: Backend, owner: LeaseOwner, *, deadline: float = 60.0, **options: object
) -> list[ClaimedRun]:
    """Claim until something is granted (a lease or a registration must lapse first)."""
    end = time.monotonic() + deadline
    while True:
        got = await backend.claim_runs(owner, **options)  # type: ignore[arg-type]
        if got or time.monotonic() > end:
            return got
        await asyncio.sleep(0.01)


async def lapse(backend: Backend, run_id: str, lease: Lease) -> Lease:
    """Let ``lease`` lapse by the store's clock, as if its holder froze; return it.

    The store's clock is not ours to read, so a probe run in a queue of its own
    is leased for as short a time just after: once a claim takes the probe over,
    ``lease`` (renewed before it) has expired too.
    """
    short = await backend.renew_lease(run_id, lease.model_copy(update={"ttl": 0.05}))
    await submit(backend, f"{run_id}-probe", queue="probe", agent_name="probe")
    await backend.acquire_lease(f"{run_id}-probe", LeaseOwner.current(), ttl=0.05)
    got = await claim_until(backend, LeaseOwner.current(), agents=["probe"], queues=["probe"])
    assert [c.run_id for c in got] == [f"{run_id}-probe"]
    assert got[0].takeover
    return short


class QueuePlaceTests(BackendTestCase):
    """``max_running`` counts the runs of a queue that hold a place (`holds_place`)."""

    def test_max_running_caps_the_runs_holding_a_live_lease_per_queue(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            for i in range(5):
                await submit(backend, f"q{i}", queue="slow", created_at=at(i))
            await submit(backend, "free", queue="fast", created_at=at(9))
            owner = LeaseOwner.current()
            cap = {"slow": 2}
            got = await backend.claim_runs(owner, agents=["agent"], limit=10, max_running=cap)
            assert sorted(c.run_id for c in got) == ["free", "q0", "q1"]
            assert await backend.claim_runs(owner, agents=["agent"], max_running=cap) == []
            q0 = next(c for c in got if c.run_id == "q0")
            done = step(2, RunState.DONE)
            await backend.append("q0", [done], expected_seq=1, lease=q0.lease, release=True)
            again = await backend.claim_runs(owner, agents=["agent"], limit=10, max_running=cap)
            assert [c.run_id for c in again] == ["q2"]

        self.drive(request, body)

    def test_a_run_at_rest_holds_no_place_even_with_its_lease_still_held(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # `holds_place`: only a run not at rest counts toward max_running. A
            # writer that brings its run to rest without releasing the lease (the
            # contract allows it; the engine releases) frees the place all the same.
            cap = {"q": 1}
            for rest in (RunState.DONE, RunState.WAITING, RunState.ERROR, RunState.CANCELLED):
                await submit(backend, f"{rest.value}-first", queue="q", created_at=at(1))
                await submit(backend, f"{rest.value}-next", queue="q", created_at=at(2))
                (first,) = await backend.claim_runs(
                    LeaseOwner.current(), agents=["agent"], ttl=300, max_running=cap
                )
                assert first.run_id == f"{rest.value}-first"
                await backend.append(
                    first.run_id, [step(2, rest)], expected_seq=1, lease=first.lease
                )
                assert (await backend.get_run(first.run_id)).lease is not None
                got = await backend.claim_runs(
                    LeaseOwner.current(), agents=["agent"], ttl=300, max_running=cap
                )
                assert [c.run_id for c in got] == [f"{rest.value}-next"], rest
                done = step(2, RunState.DONE)
                await backend.append(got[0].run_id, [done], expected_seq=1, lease=got[0].lease,
                                     release=True)

        self.drive(request, body)

    def test_a_run_leaving_rest_with_the_lease_it_kept_holds_a_place_again(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            cap = {"q": 2}
            for i, run_id in enumerate(("a", "b", "c", "d")):
                await submit(backend, run_id, queue="q", created_at=at(i))
            owner = LeaseOwner.current()
            a, b = await backend.claim_runs(owner, agents=["agent"], limit=5, ttl=300,
                                            max_running=cap)
            assert (a.run_id, b.run_id) == ("a", "b")
            waiting = step(2, RunState.WAITING)
            kept = await backend.append("a", [waiting], expected_seq=1, lease=a.lease)
            (c,) = await backend.claim_runs(owner, agents=["agent"], limit=5, ttl=300,
                                            max_running=cap)
            assert c.run_id == "c"  # a rests: two places held, by b and c
            kept = await backend.append("a", [step(3)], expected_seq=2, lease=kept)
            # a runs again under the lease it kept: three hold a place, over the cap
            assert await backend.claim_runs(owner, agents=["agent"], limit=5,
                                            max_running=cap) == []
            done = step(4, RunState.DONE)
            await backend.append("a", [done], expected_seq=3, lease=kept, release=True)
            assert await backend.claim_runs(owner, agents=["agent"], limit=5,
                                            max_running=cap) == []
            await backend.append("b", [step(2, RunState.DONE)], expected_seq=1, lease=b.lease,
                                 release=True)
            got = await backend.claim_runs(owner, agents=["agent"], limit=5, max_running=cap)
            assert [g.run_id for g in got] == ["d"]

        self.drive(request, body)

    def test_a_lapsed_lease_nobody_took_over_still_fills_its_queue(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # A holder frozen (or cut off) past its TTL whose run nobody can take
            # over (no claimer knows its agent) may thaw and write again: the fence
            # refuses only a taken-over lease. So its run keeps its place in the
            # queue, or a claim started meanwhile would run beside it over the cap.
            await submit(backend, "frozen", queue="q", created_at=at(1))
            await submit(backend, "next", queue="q", created_at=at(2), agent_name="other")
            cap = {"q": 1}
            (first,) = await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], ttl=30, max_running=cap
            )
            frozen = await lapse(backend, "frozen", first.lease)
            assert await backend.claim_runs(
                LeaseOwner.current(), agents=["other"], limit=5, max_running=cap
            ) == []
            # Thawed, the holder writes on (nobody took over) and then comes to rest.
            await backend.append("frozen", [step(2)], expected_seq=1, lease=frozen)
            assert await backend.claim_runs(
                LeaseOwner.current(), agents=["other"], limit=5, max_running=cap
            ) == []
            done = step(3, RunState.DONE)
            await backend.append("frozen", [done], expected_seq=2, lease=frozen, release=True)
            got = await backend.claim_runs(
                LeaseOwner.current(), agents=["other"], limit=5, max_running=cap
            )
            assert [c.run_id for c in got] == ["next"]

        self.drive(request, body)

    def test_a_full_queue_takes_its_lapsed_run_over_before_a_higher_priority_new_one(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "frozen", queue="q", created_at=at(1))
            cap = {"q": 1}
            (first,) = await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], ttl=30, max_running=cap
            )
            await submit(backend, "urgent", queue="q", created_at=at(2), priority=9)
            frozen = await lapse(backend, "frozen", first.lease)
            # The lapsed run holds the queue's one place, so the higher priority
            # run cannot start; taking the lapsed run over needs no more room.
            got = await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], limit=5, max_running=cap
            )
            assert [c.run_id for c in got] == ["frozen"]
            assert got[0].takeover
            with pytest.raises(LeaseLostError):
                await backend.append("frozen", [step(2)], expected_seq=1, lease=frozen)
            assert (await backend.get_run("urgent")).lease is None
            done = step(2, RunState.DONE)
            await backend.append("frozen", [done], expected_seq=1, lease=got[0].lease,
                                 release=True)
            again = await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], limit=5, max_running=cap
            )
            assert [c.run_id for c in again] == ["urgent"]

        self.drive(request, body)
