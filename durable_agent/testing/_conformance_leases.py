"""Conformance tests of leases, listing, sharing a store and damaged records."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from durable_agent.backend import Backend, Capability, LeaseOwner
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRunError,
    LeaseLostError,
    RunBusyError,
    RunExistsError,
    RunNotFoundError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    Lease,
    utcnow,
)
from durable_agent.testing._conformance_base import (
    BackendTestCase,
    _ids,
    at,
    created,
    header,
    new_run,
    step,
)


class LeaseTests(BackendTestCase):
    """acquire / renew / release, expiry, takeover and fencing; request_cancel."""

    def test_acquire_increments_the_generation_and_a_live_lease_is_busy(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await backend.create_run(header("r1"), [created()])
            mine = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert mine.generation == 1
            with pytest.raises(RunBusyError, match=mine.owner):
                await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            stored = await backend.get_run("r1")
            assert stored.lease == mine
            assert stored.lease_generation == 1

        self.drive(request, body)

    def test_two_concurrent_acquirers_get_one_lease(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            await backend.create_run(header("r1"), [created()])
            outcomes = await asyncio.gather(
                *(backend.acquire_lease("r1", LeaseOwner.current(), ttl=30) for _ in range(3)),
                return_exceptions=True,
            )
            leases = [o for o in outcomes if isinstance(o, Lease)]
            assert len(leases) == 1
            assert all(isinstance(o, RunBusyError) for o in outcomes if o is not leases[0])
            assert (await backend.get_run("r1")).lease == leases[0]

        self.drive(request, body)

    def test_an_owner_takes_its_own_live_lease_back_and_fences_the_earlier_holder(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # DESIGN.md §3 rule 5: a process may always re-acquire what its own
            # owner id holds (a release that failed, a write whose caller was
            # cancelled); the new generation fences the lease left behind.
            await backend.create_run(header("r1"), [created()])
            owner = LeaseOwner.current()
            left = await backend.acquire_lease("r1", owner, ttl=30)
            again = await backend.acquire_lease("r1", owner, ttl=30)
            assert again.generation == left.generation + 1
            assert again.owner == owner.id
            stored = await backend.get_run("r1")
            assert stored.lease == again
            assert stored.lease_generation == again.generation
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(2)], expected_seq=1, lease=left)
            await backend.release_lease("r1", left)  # stale: the new lease stays
            assert (await backend.get_run("r1")).lease == again
            await backend.append("r1", [step(2)], expected_seq=1, lease=again)
            # Same host and pid, another owner id: still busy at the store (only
            # the engine knows whether that owner still drives the run).
            sibling = LeaseOwner(host=owner.host, pid=owner.pid)
            with pytest.raises(RunBusyError, match=owner.id):
                await backend.acquire_lease("r1", sibling, ttl=30)

        self.drive(request, body)

    def test_renew_extends_a_held_lease(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            renewed = await backend.renew_lease("r1", lease)
            assert renewed.generation == lease.generation
            assert renewed.expires_at >= lease.expires_at
            assert (await backend.get_run("r1")).lease == renewed

        self.drive(request, body)

    def test_expired_lease_is_taken_over_and_fences_the_old_writer(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await backend.create_run(header("r1"), [created()])
            old = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=0.05)
            await asyncio.sleep(0.1)
            new = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert new.generation == old.generation + 1
            with pytest.raises(LeaseLostError, match="generation 1"):
                await backend.append("r1", [step(2)], expected_seq=1, lease=old)
            with pytest.raises(LeaseLostError):
                await backend.renew_lease("r1", old)
            await backend.release_lease("r1", old)  # a stale release leaves the new lease alone
            assert (await backend.get_run("r1")).lease == new
            await backend.append("r1", [step(2)], expected_seq=1, lease=new)
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 2
            assert loaded.header.lease_generation == 2

        self.drive(request, body)

    def test_an_expired_lease_not_yet_taken_over_still_appends(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            # Fencing is by generation: expiry only lets another owner in.
            await backend.create_run(header("r1"), [created()])
            lease = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=0.05)
            await asyncio.sleep(0.1)
            renewed = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            assert renewed.expires_at > lease.expires_at
            assert (await backend.get_run("r1")).seq == 2

        self.drive(request, body)

    def test_takeover_of_the_held_generation_is_granted_while_live(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            old = await new_run(backend, "r1")
            with pytest.raises(RunBusyError):
                await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30, takeover=0)
            new = await backend.acquire_lease(
                "r1", LeaseOwner.current(), ttl=30, takeover=old.generation
            )
            assert new.generation == old.generation + 1
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(2)], expected_seq=1, lease=old)

        self.drive(request, body)

    def test_append_with_the_same_generation_but_another_owner_is_refused(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            forged = lease.model_copy(update={"owner": "elsewhere:1:abc"})
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(2)], expected_seq=1, lease=forged)
            assert (await backend.get_run("r1")).seq == 1

        self.drive(request, body)

    def test_released_lease_lets_another_owner_in_and_append_needs_a_lease(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            await backend.release_lease("r1", lease)
            stored = await backend.get_run("r1")
            assert stored.lease is None
            assert stored.lease_generation == lease.generation
            with pytest.raises(LeaseLostError, match="nobody"):
                await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            with pytest.raises(LeaseLostError):
                await backend.renew_lease("r1", lease)
            other = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert other.generation == lease.generation + 1

        self.drive(request, body)

    def test_request_cancel_is_carried_by_every_lease_handed_out_after_it(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            assert lease.cancel_requested is None
            first = await backend.request_cancel("r1", "user pressed stop")
            assert first.cancel_requested == "user pressed stop"
            again = await backend.request_cancel("r1", "a later reason")
            assert again.cancel_requested == "user pressed stop"  # the first reason stands
            assert (await backend.get_run("r1")).cancel_requested == "user pressed stop"
            renewed = await backend.renew_lease("r1", lease)
            assert renewed.cancel_requested == "user pressed stop"
            appended = await backend.append("r1", [step(2)], expected_seq=1, lease=renewed)
            assert appended.cancel_requested == "user pressed stop"
            await backend.release_lease("r1", appended)
            taken = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert taken.cancel_requested == "user pressed stop"
            assert (await backend.load_run("r1")).header.seq == 2

        self.drive(request, body)


async def _populate(backend: Backend) -> None:
    """Six runs, created one second apart (r0 oldest), over two sessions and users."""
    specs = [
        ("r0", "sa", "ua", RunState.PENDING),
        ("r1", "sa", "ub", RunState.DONE),
        ("r2", "sb", "ua", RunState.DONE),
        ("r3", "sa", "ua", RunState.ERROR),
        ("r4", "sb", "ub", RunState.PENDING),
        ("r5", None, None, RunState.CANCELLED),
    ]
    for second, (run_id, session, user, state) in enumerate(specs):
        await backend.create_run(
            header(
                run_id,
                session_id=session,
                user_id=user,
                state=state,
                created_at=at(second),
                updated_at=at(second),
            ),
            [created()],
        )


class ListTests(BackendTestCase):
    """list_runs: filters, newest first, cursor paging."""

    def test_list_runs_filters_newest_first(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            await _populate(backend)
            assert _ids((await backend.list_runs()).runs) == ["r5", "r4", "r3", "r2", "r1", "r0"]
            assert _ids((await backend.list_runs(session_id="sa")).runs) == ["r3", "r1", "r0"]
            assert _ids((await backend.list_runs(user_id="ub")).runs) == ["r4", "r1"]
            both = await backend.list_runs(session_id="sa", user_id="ua")
            assert _ids(both.runs) == ["r3", "r0"]
            done = await backend.list_runs(states=[RunState.DONE, RunState.CANCELLED])
            assert _ids(done.runs) == ["r5", "r2", "r1"]
            assert (await backend.list_runs(states=[])).runs == ()
            window = await backend.list_runs(created_after=at(1), created_before=at(4))
            assert _ids(window.runs) == ["r3", "r2"]  # both bounds are exclusive
            assert window.next_cursor is None
            mixed = await backend.list_runs(
                session_id="sa", states=[RunState.DONE, RunState.ERROR], created_before=at(3)
            )
            assert _ids(mixed.runs) == ["r1"]
            assert (await backend.list_runs(session_id="nobody")).runs == ()

        self.drive(request, body)

    def test_list_runs_follows_state_changes(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1", session_id="s")
            assert _ids((await backend.list_runs(states=[RunState.PENDING])).runs) == ["r1"]
            await backend.append("r1", [step(2, RunState.DONE)], expected_seq=1, lease=lease)
            assert (await backend.list_runs(states=[RunState.PENDING])).runs == ()
            done = await backend.list_runs(states=[RunState.DONE], session_id="s")
            assert _ids(done.runs) == ["r1"]
            assert done.runs[0].seq == 2

        self.drive(request, body)

    def test_list_runs_pages_with_a_cursor_without_gaps_or_repeats(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            for i in range(7):
                # Pairs share a creation time, so the run id must break the tie.
                created_at = at(i // 2)
                await backend.create_run(
                    header(f"r{i}", created_at=created_at, updated_at=created_at), [created()]
                )
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await backend.list_runs(limit=3, cursor=cursor)
                pages += 1
                seen.extend(_ids(page.runs))
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert pages == 3
            assert seen == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
            filtered = await backend.list_runs(limit=2, states=[RunState.PENDING])
            assert _ids(filtered.runs) == ["r6", "r5"]
            assert filtered.next_cursor is not None
            rest = await backend.list_runs(states=[RunState.PENDING], cursor=filtered.next_cursor)
            assert _ids(rest.runs) == ["r4", "r3", "r2", "r1", "r0"]

        self.drive(request, body)

    def test_list_runs_rejects_a_bad_limit_or_cursor(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            with pytest.raises(ConfigurationError, match="limit"):
                await backend.list_runs(limit=0)
            with pytest.raises(ConfigurationError, match="cursor"):
                await backend.list_runs(cursor="not-a-cursor")

        self.drive(request, body)


class DurabilityTests(BackendTestCase):
    """What a second store object over the same storage sees (``reopen`` hook)."""

    def test_a_reopened_store_sees_every_returned_write(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1", session_id="s")
            lease = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            await backend.request_cancel("r1", "stop")
            before = await backend.load_run("r1")
            await backend.close()
            other = await self._reopened(backend)
            try:
                assert await other.load_run("r1") == before
                assert _ids((await other.list_runs(session_id="s")).runs) == ["r1"]
                await other.append("r1", [step(3)], expected_seq=2, lease=lease)
            finally:
                await other.close()

        self.drive(request, body, needs=frozenset({Capability.DURABLE}))

    def test_two_store_objects_compare_and_set_against_each_other(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            other = await self._reopened(backend)
            try:
                lease = await new_run(backend, "r1")
                outcomes = await asyncio.gather(
                    backend.append(
                        "r1", [step(2, RunState.MODEL_CALL)], expected_seq=1, lease=lease
                    ),
                    other.append("r1", [step(2, RunState.CANCELLED)], expected_seq=1, lease=lease),
                    return_exceptions=True,
                )
                errors = [o for o in outcomes if isinstance(o, BaseException)]
                assert len(errors) == 1
                assert isinstance(errors[0], ConcurrentUpdateError)
                with pytest.raises(RunBusyError):
                    await other.acquire_lease("r1", LeaseOwner.current(), ttl=30)
                with pytest.raises(RunExistsError):
                    await other.create_run(header("r1"), [created()])
                assert (await other.load_run("r1")).header.seq == 2
            finally:
                await other.close()

        self.drive(request, body, needs=frozenset({Capability.CROSS_PROCESS}))


async def _two_runs(backend: Backend) -> Lease:
    """Runs "bad" and "good" at seq 2, one owner; returns the owner's lease of "good"."""
    leases = {}
    for run_id in ("bad", "good"):
        lease = await new_run(backend, run_id)
        leases[run_id] = await backend.append(run_id, [step(2)], expected_seq=1, lease=lease)
    return leases["good"]


class DamageTests(BackendTestCase):
    """A record that does not validate fails its run alone (``damage`` hook)."""

    def test_a_corrupt_event_fails_only_its_run(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            lease = await _two_runs(backend)
            await self._damage(backend, "bad", 2)
            with pytest.raises(CorruptRunError, match="'bad'") as caught:
                await backend.load_run("bad")
            assert caught.value.run_id == "bad"
            assert (await backend.load_run("good")).header.seq == 2
            await backend.append("good", [step(3)], expected_seq=2, lease=lease)
            assert {h.run_id for h in (await backend.list_runs()).runs} >= {"good"}

        self.drive(request, body)

    def test_a_corrupt_header_fails_only_its_run(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            lease = await _two_runs(backend)
            await self._damage(backend, "bad", None)
            with pytest.raises(CorruptRunError, match="'bad'"):
                await backend.get_run("bad")
            with pytest.raises(CorruptRunError):
                await backend.load_run("bad")
            with pytest.raises(CorruptRunError):
                await backend.append("bad", [step(3)], expected_seq=2, lease=lease)
            await backend.append("good", [step(3)], expected_seq=2, lease=lease)
            # A damaged header never breaks a listing, a page or a prune.
            assert _ids((await backend.list_runs()).runs) == ["good"]
            page = await backend.list_runs(limit=1)
            assert (_ids(page.runs), page.next_cursor) == (["good"], None)
            await backend.prune(older_than=utcnow() + timedelta(days=1), states=list(RunState))
            assert await backend.delete_run("bad") is True
            with pytest.raises(RunNotFoundError):
                await backend.get_run("bad")

        self.drive(request, body)
