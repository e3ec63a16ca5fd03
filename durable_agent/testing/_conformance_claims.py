"""Conformance tests of what workers need: submitted runs, claims, liveness, wake-ups.

Every backend runs them: a backend without a native claim (`Capability.CLAIM`)
is tested through the portable fallback, which must give the same answers.
Tests of a guarantee only a native implementation gives (``max_running``
checked atomically, worker liveness, wake-ups) need its capability.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from durable_agent.backend import Backend, Capability, ClaimedRun, LeaseOwner
from durable_agent.errors import ConfigurationError, LeaseLostError
from durable_agent.fsm import RunState
from durable_agent.records import utcnow
from durable_agent.testing._conformance_base import BackendTestCase, at, created, header, step
from durable_agent.testing._conformance_places import (
    QueuePlaceTests,
    claim_until,
    lapse,
    submit,
)


class ClaimTests(QueuePlaceTests):
    """`Backend.claim_runs`: exclusive, filtered, ordered, capped; submitted runs.

    It includes `QueuePlaceTests` (what counts toward ``max_running``).
    """

    def test_a_submitted_run_keeps_its_queue_priority_and_not_before(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            later = at(100)
            await submit(backend, "r1", queue="mail", priority=7, not_before=later)
            await submit(backend, "r2")
            stored = await backend.get_run("r1")
            assert (stored.queue, stored.priority, stored.not_before) == ("mail", 7, later)
            assert stored.lease is None
            assert stored.state is RunState.PENDING
            plain = await backend.get_run("r2")
            assert (plain.queue, plain.priority, plain.not_before) == ("default", 0, None)
            assert (await backend.load_run("r1")).header == stored

        self.drive(request, body)

    def test_a_claim_is_a_lease_acquisition_and_a_run_is_claimed_once(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "r1")
            owner = LeaseOwner.current()
            got = await backend.claim_runs(owner, agents=["agent"], limit=5, ttl=30)
            assert [c.run_id for c in got] == ["r1"]
            claim = got[0]
            assert not claim.takeover
            assert claim.lease.owner == owner.id
            assert claim.lease.generation == 1
            stored = await backend.get_run("r1")
            assert stored.lease == claim.lease
            assert stored.lease_generation == 1
            assert await backend.claim_runs(LeaseOwner.current(), agents=["agent"]) == []
            assert await backend.claim_runs(owner, agents=["agent"]) == []  # not even its own
            await backend.append("r1", [step(2)], expected_seq=1, lease=claim.lease)

        self.drive(request, body)

    def test_racing_claimers_never_share_a_run(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            for i in range(12):
                await submit(backend, f"r{i:02}")
            owners = [LeaseOwner.current() for _ in range(4)]
            rounds = await asyncio.gather(
                *(
                    backend.claim_runs(o, agents=["agent"], limit=3, ttl=30)
                    for o in owners
                    for _ in range(2)
                )
            )
            ids = [c.run_id for got in rounds for c in got]
            assert len(ids) == len(set(ids))
            assert sorted(ids) == [f"r{i:02}" for i in range(12)]
            for got in rounds:
                for c in got:
                    assert (await backend.get_run(c.run_id)).lease == c.lease

        self.drive(request, body)

    def test_unknown_agents_other_queues_later_runs_and_runs_at_rest_are_left(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "other", agent_name="someone-else")
            await submit(backend, "mail", queue="mail")
            await submit(backend, "later", not_before=utcnow() + timedelta(hours=1))
            await submit(backend, "due", not_before=utcnow() - timedelta(seconds=1))
            for state in (RunState.DONE, RunState.WAITING, RunState.ERROR, RunState.CANCELLED):
                first = created().model_copy(update={"state": state})
                await backend.create_run(header(state.value, state=state), [first])
            owner = LeaseOwner.current()
            got = await backend.claim_runs(owner, agents=["agent"], queues=["default"], limit=10)
            assert [c.run_id for c in got] == ["due"]
            got = await backend.claim_runs(owner, agents=["agent"], queues=None, limit=10)
            assert [c.run_id for c in got] == ["mail"]
            assert await backend.claim_runs(owner, agents=["agent", "x"], limit=10) == []
            got = await backend.claim_runs(owner, agents=["someone-else"], limit=10)
            assert [c.run_id for c in got] == ["other"]

        self.drive(request, body)

    def test_claims_come_highest_priority_first_then_oldest_first_up_to_the_limit(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "low-old", created_at=at(1), priority=0)
            await submit(backend, "high-new", created_at=at(9), priority=5)
            await submit(backend, "low-new", created_at=at(5), priority=0)
            await submit(backend, "high-old", created_at=at(3), priority=5)
            owner = LeaseOwner.current()
            first = await backend.claim_runs(owner, agents=["agent"], limit=3)
            assert [c.run_id for c in first] == ["high-old", "high-new", "low-old"]
            rest = await backend.claim_runs(owner, agents=["agent"], limit=3)
            assert [c.run_id for c in rest] == ["low-new"]
            assert await backend.claim_runs(owner, agents=["agent"], limit=0) == []

        self.drive(request, body)

    def test_a_claim_fills_its_limit_past_the_surplus_of_a_nearly_full_queue(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # The oldest runs are all of a queue with one place left: a claim
            # that looks at a few runs from the front and then drops the
            # queue's surplus would come back with one run while three wait.
            for i in range(6):
                await submit(backend, f"slow{i}", queue="slow", created_at=at(i))
            for i in range(4):
                await submit(backend, f"fast{i}", queue="fast", created_at=at(10 + i))
            owner = LeaseOwner.current()
            cap = {"slow": 1}
            got = await backend.claim_runs(owner, agents=["agent"], limit=3, max_running=cap)
            assert [c.run_id for c in got] == ["slow0", "fast0", "fast1"]
            got = await backend.claim_runs(owner, agents=["agent"], limit=3, max_running=cap)
            assert [c.run_id for c in got] == ["fast2", "fast3"]

        self.drive(request, body)

    def test_an_expired_lease_is_claimed_as_a_takeover_that_fences_the_old_holder(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await backend.create_run(
                header("r1", state=RunState.MODEL_CALL, seq=2), [created(), step(2)]
            )
            old = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=0.05)
            live = await backend.claim_runs(LeaseOwner.current(), agents=["agent"])
            assert live == [] or live[0].takeover  # only once expired by the store's clock
            got = live or await claim_until(backend, LeaseOwner.current(), agents=["agent"])
            assert got[0].takeover
            assert got[0].previous is not None
            assert got[0].previous.generation == old.generation
            assert got[0].lease.generation == old.generation + 1
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(3)], expected_seq=2, lease=old)
            await backend.append("r1", [step(3)], expected_seq=2, lease=got[0].lease)

        self.drive(request, body)

    def test_a_claim_carries_a_pending_cancellation(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "r1")
            await backend.request_cancel("r1", "not needed")
            got = await backend.claim_runs(LeaseOwner.current(), agents=["agent"])
            assert got[0].lease.cancel_requested == "not needed"

        self.drive(request, body)

    def test_a_lapsed_run_is_taken_over_while_newer_free_runs_fill_every_claim(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # A store may read the held runs (to find lapsed leases) only now and
            # then while the free ones fill its claims; it must still get there.
            await submit(backend, "frozen", created_at=at(1))
            owner = LeaseOwner.current()
            (first,) = await backend.claim_runs(owner, agents=["agent"], ttl=30)
            await lapse(backend, "frozen", first.lease)
            for i in range(3):
                await submit(backend, f"new{i}", created_at=at(2 + i))
            end = time.monotonic() + 60
            while time.monotonic() < end:
                (got,) = await backend.claim_runs(owner, agents=["agent"], limit=1)
                if got.run_id == "frozen":
                    break
                await backend.release_lease(got.run_id, got.lease)  # free again
                await asyncio.sleep(0.01)
            assert got.run_id == "frozen"
            assert got.takeover

        self.drive(request, body)

    def test_bad_claim_arguments_are_refused(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            owner = LeaseOwner.current()
            with pytest.raises(ConfigurationError):
                await backend.claim_runs(owner, agents="agent")
            with pytest.raises(ConfigurationError):
                await backend.claim_runs(owner, agents=["agent"], limit=-1)
            with pytest.raises(ConfigurationError):
                await backend.claim_runs(owner, agents=["agent"], ttl=0)
            with pytest.raises(ConfigurationError):
                await backend.claim_runs(owner, agents=["agent"], max_running={"q": -1})

        self.drive(request, body)


class AtomicQueueLimitTests(BackendTestCase):
    """``max_running`` checked in the claim's own atomic step (`Capability.QUEUE_LIMIT`)."""

    def test_racing_claimers_never_exceed_max_running(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            for i in range(10):
                await submit(backend, f"r{i}", queue="q")
            rounds = await asyncio.gather(
                *(
                    backend.claim_runs(
                        LeaseOwner.current(), agents=["agent"], limit=3, max_running={"q": 4}
                    )
                    for _ in range(6)
                )
            )
            assert sum(len(got) for got in rounds) == 4

        self.drive(request, body, needs=frozenset({Capability.QUEUE_LIMIT}))

    def test_a_lapsed_lease_holds_its_place_until_one_claim_takes_it_over(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "old", queue="q", created_at=at(1))
            await submit(backend, "new", queue="q", created_at=at(2))
            cap = {"q": 1}
            (first,) = await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], limit=5, ttl=30, max_running=cap
            )
            assert first.run_id == "old"
            assert await backend.claim_runs(
                LeaseOwner.current(), agents=["agent"], limit=5, max_running=cap
            ) == []  # the live lease fills the queue
            short = first.lease.model_copy(update={"ttl": 0.05})
            await backend.renew_lease("old", short)  # its holder goes quiet: it lapses
            end = time.monotonic() + 60
            granted: list[ClaimedRun] = []
            while not granted and time.monotonic() < end:
                rounds = await asyncio.gather(
                    *(
                        backend.claim_runs(
                            LeaseOwner.current(), agents=["agent"], limit=5, max_running=cap
                        )
                        for _ in range(3)
                    )
                )
                granted = [c for got in rounds for c in got]
            assert [c.run_id for c in granted] == ["old"]  # oldest first, and only one
            assert granted[0].takeover

        self.drive(request, body, needs=frozenset({Capability.QUEUE_LIMIT}))


class WorkerLivenessTests(BackendTestCase):
    """`Backend.register_worker`: a lapsed worker's leases are claimable before they expire."""

    def test_a_live_workers_leases_stay_and_a_lapsed_workers_are_taken_over(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "r1")
            await submit(backend, "r2")
            worker, other = LeaseOwner.current(), LeaseOwner.current()
            await backend.register_worker(worker, ttl=30)
            held = await backend.claim_runs(worker, agents=["agent"], limit=2, ttl=300)
            assert len(held) == 2
            assert await backend.claim_runs(other, agents=["agent"], limit=2) == []
            await backend.register_worker(worker, ttl=0.05)  # stops renewing: it lapses
            got = await claim_until(backend, other, agents=["agent"], limit=2, ttl=30)
            if len(got) < 2:
                got += await backend.claim_runs(other, agents=["agent"], limit=2)
            assert sorted(c.run_id for c in got) == ["r1", "r2"]
            assert all(c.takeover for c in got)
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(2)], expected_seq=1, lease=held[0].lease)

        self.drive(request, body, needs=frozenset({Capability.WORKER_LIVENESS}))

    def test_an_unregistered_worker_leaves_its_released_runs_to_others(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await submit(backend, "r1")
            worker = LeaseOwner.current()
            await backend.register_worker(worker, ttl=30)
            (claim,) = await backend.claim_runs(worker, agents=["agent"], ttl=300)
            await backend.release_lease("r1", claim.lease)
            await backend.unregister_worker(worker)
            await backend.unregister_worker(worker)  # twice is harmless
            (again,) = await backend.claim_runs(LeaseOwner.current(), agents=["agent"])
            assert not again.takeover
            assert again.lease.generation == 2

        self.drive(request, body, needs=frozenset({Capability.WORKER_LIVENESS}))


class WakeUpTests(BackendTestCase):
    """`Backend.wait_for_change`: the store wakes a waiter, and its fallback returns."""

    def test_wait_for_change_returns_after_its_timeout_without_a_change(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            token = await backend.wait_for_change(None, timeout=0)
            assert isinstance(token, str)
            assert isinstance(await backend.wait_for_change(token, timeout=0.01), str)

        self.drive(request, body)

    def test_a_submit_wakes_a_waiter(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            if Capability.WAKE_UP not in backend.capabilities:
                pytest.skip(f"{type(backend).__name__} does not declare capability wake_up")
            token = await backend.wait_for_change(None, timeout=0)
            waiter = asyncio.ensure_future(backend.wait_for_change(token, timeout=60))
            await asyncio.sleep(0)
            await submit(backend, "r1")
            new = await asyncio.wait_for(waiter, 60)
            assert new != token
            # A change made before the wait began is not missed either.
            await submit(backend, "r2")
            assert await asyncio.wait_for(backend.wait_for_change(new, timeout=60), 60) != new

        self.drive(request, body)

    def test_a_run_coming_to_rest_wakes_a_waiter(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            if Capability.WAKE_UP not in backend.capabilities:
                pytest.skip(f"{type(backend).__name__} does not declare capability wake_up")
            await submit(backend, "r1")
            (claim,) = await backend.claim_runs(LeaseOwner.current(), agents=["agent"])
            token = await backend.wait_for_change(None, timeout=0)
            waiter = asyncio.ensure_future(backend.wait_for_change(token, timeout=60))
            done = step(2, RunState.DONE)
            await backend.append("r1", [done], expected_seq=1, lease=claim.lease, release=True)
            assert await asyncio.wait_for(waiter, 60) != token

        self.drive(request, body)
