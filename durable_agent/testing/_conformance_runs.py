"""Conformance tests of writing runs: create, append, delete, prune, payloads, close.

Runs whose header cannot be read are `durable_agent.testing._conformance_unreadable`'s;
`UnreadableTests` is re-exported here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    ConcurrentUpdateError,
    LeaseLostError,
    RunExistsError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    AssistantMessage,
    CreatedEvent,
    ModelResponseEvent,
    SystemMessage,
    UserMessage,
    utcnow,
)
from durable_agent.testing._conformance_base import (
    BackendTestCase,
    _ids,
    created,
    header,
    new_run,
    step,
)
from durable_agent.testing._conformance_unreadable import UnreadableTests

__all__ = [
    "AppendTests",
    "DeleteTests",
    "LifecycleTests",
    "PayloadTests",
    "RunTests",
    "UnreadableTests",
]


class RunTests(BackendTestCase):
    """create_run, load_run, get_run."""

    def test_created_run_loads_back_equal(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            first = CreatedEvent(
                seq=1,
                state=RunState.PENDING,
                messages=(SystemMessage(content="be brief"), UserMessage(content="hi")),
            )
            stored = header("r1", session_id="s1", user_id="u1", agent_name="helper")
            await backend.create_run(stored, [first])
            loaded = await backend.load_run("r1")
            assert loaded.header == stored
            assert loaded.events == (first,)
            assert await backend.get_run("r1") == stored

        self.drive(request, body)

    def test_create_run_with_a_taken_id_raises_and_keeps_the_first(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await backend.create_run(header("r1", agent_name="first"), [created("one")])
            with pytest.raises(RunExistsError, match="r1"):
                await backend.create_run(header("r1", agent_name="second"), [created("two")])
            loaded = await backend.load_run("r1")
            assert loaded.header.agent_name == "first"
            first = loaded.events[0]
            assert isinstance(first, CreatedEvent)
            assert first.messages[0].content == "one"

        self.drive(request, body)

    def test_concurrent_creates_of_one_id_let_exactly_one_in(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            outcomes = await asyncio.gather(
                *(
                    backend.create_run(header("r1", agent_name=f"a{i}"), [created(f"c{i}")])
                    for i in range(4)
                ),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(errors) == 3
            assert all(isinstance(e, RunExistsError) for e in errors)
            winner = next(i for i, o in enumerate(outcomes) if o is None)
            loaded = await backend.load_run("r1")
            assert loaded.header.agent_name == f"a{winner}"
            assert len(loaded.events) == 1

        self.drive(request, body)

    def test_unknown_run_raises_run_not_found(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "real")
            with pytest.raises(RunNotFoundError, match="ghost"):
                await backend.load_run("ghost")
            with pytest.raises(RunNotFoundError):
                await backend.get_run("ghost")
            with pytest.raises(RunNotFoundError):
                await backend.append("ghost", [step(2)], expected_seq=1, lease=lease)
            with pytest.raises(RunNotFoundError):
                await backend.acquire_lease("ghost", LeaseOwner.current(), ttl=30)
            with pytest.raises(RunNotFoundError):
                await backend.renew_lease("ghost", lease)
            with pytest.raises(RunNotFoundError):
                await backend.request_cancel("ghost", "stop")
            await backend.release_lease("ghost", lease)  # a no-op
            assert await backend.delete_run("ghost") is False

        self.drive(request, body)


class AppendTests(BackendTestCase):
    """append: compare-and-set on seq and lease, all or nothing, release."""

    def test_append_with_the_expected_seq_stores_events_and_renews_the_lease(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            renewed = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            assert renewed.generation == lease.generation
            assert renewed.owner == lease.owner
            assert renewed.expires_at >= lease.expires_at
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 2
            assert loaded.header.state is RunState.MODEL_CALL
            assert loaded.header.lease == renewed
            assert loaded.header.updated_at >= loaded.header.created_at
            assert [e.seq for e in loaded.events] == [1, 2]
            assert await backend.get_run("r1") == loaded.header

        self.drive(request, body)

    def test_append_of_several_events_is_all_or_nothing(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            answer = ModelResponseEvent(
                seq=3,
                state=RunState.DONE,
                trigger="final_answer",
                message=AssistantMessage(content="done"),
                model="scripted",
            )
            lease = await backend.append("r1", [step(2), answer], expected_seq=1, lease=lease)
            with pytest.raises(ConcurrentUpdateError, match="seq 9"):
                await backend.append("r1", [step(4), step(9)], expected_seq=3, lease=lease)
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 3
            assert loaded.header.state is RunState.DONE
            assert loaded.events[-1] == answer

        self.drive(request, body)

    def test_append_of_no_events_only_renews_the_lease(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            renewed = await backend.append("r1", [], expected_seq=1, lease=lease)
            assert renewed.expires_at >= lease.expires_at
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 1
            assert loaded.header.state is RunState.PENDING
            assert loaded.header.lease == renewed

        self.drive(request, body)

    def test_append_with_a_stale_seq_raises_and_writes_nothing(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            lease = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
            with pytest.raises(ConcurrentUpdateError, match="expected seq 1") as caught:
                await backend.append(
                    "r1", [step(2, RunState.TOOL_EXEC)], expected_seq=1, lease=lease
                )
            assert not isinstance(caught.value, LeaseLostError)
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 2
            assert loaded.events[-1].state is RunState.MODEL_CALL

        self.drive(request, body)

    def test_two_concurrent_appenders_of_one_seq_exactly_one_wins(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            outcomes = await asyncio.gather(
                backend.append("r1", [step(2, RunState.MODEL_CALL)], expected_seq=1, lease=lease),
                backend.append("r1", [step(2, RunState.CANCELLED)], expected_seq=1, lease=lease),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(errors) == 1
            assert isinstance(errors[0], ConcurrentUpdateError)
            loaded = await backend.load_run("r1")
            assert loaded.header.seq == 2
            winner = 0 if errors[0] is outcomes[1] else 1
            assert loaded.events[-1].state is (RunState.MODEL_CALL, RunState.CANCELLED)[winner]

        self.drive(request, body)

    def test_many_concurrent_appenders_extend_the_log_without_gap_or_duplicate(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")

            async def writer(name: int) -> int:
                wins = 0
                for _ in range(30):
                    seq = (await backend.get_run("r1")).seq
                    if seq >= 21:
                        return wins
                    try:
                        await backend.append("r1", [step(seq + 1)], expected_seq=seq, lease=lease)
                        wins += 1
                    except ConcurrentUpdateError:
                        await asyncio.sleep(0.001 * name)
                return wins

            wins = await asyncio.gather(*(writer(i) for i in range(4)))
            loaded = await backend.load_run("r1")
            assert sum(wins) == loaded.header.seq - 1
            assert [e.seq for e in loaded.events] == list(range(1, loaded.header.seq + 1))

        self.drive(request, body)

    def test_append_with_release_gives_the_lease_up_in_the_same_step(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            lease = await new_run(backend, "r1")
            await backend.append(
                "r1", [step(2, RunState.DONE)], expected_seq=1, lease=lease, release=True
            )
            stored = await backend.get_run("r1")
            assert (stored.seq, stored.state, stored.lease) == (2, RunState.DONE, None)
            assert stored.lease_generation == lease.generation
            with pytest.raises(LeaseLostError):
                await backend.append("r1", [step(3)], expected_seq=2, lease=lease)
            other = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            assert other.generation == lease.generation + 1

        self.drive(request, body)


class DeleteTests(BackendTestCase):
    """delete_run and prune."""

    def test_delete_run_removes_it_and_only_it(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            await new_run(backend, "r1", session_id="s", user_id="u")
            await new_run(backend, "r2", session_id="s", user_id="u")
            assert await backend.delete_run("r1") is True
            assert await backend.delete_run("r1") is False
            with pytest.raises(RunNotFoundError):
                await backend.load_run("r1")
            assert (await backend.load_run("r2")).header.seq == 1
            assert _ids((await backend.list_runs()).runs) == ["r2"]
            assert _ids((await backend.list_runs(session_id="s")).runs) == ["r2"]
            assert _ids((await backend.list_runs(states=[RunState.PENDING])).runs) == ["r2"]
            # The id is free again, with no leftover events.
            await backend.create_run(header("r1"), [created("again")])
            assert len((await backend.load_run("r1")).events) == 1

        self.drive(request, body)

    def test_prune_deletes_old_finished_runs_but_keeps_live_leases(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            old, new = utcnow() - timedelta(days=2), utcnow()
            for run_id, state, updated in [
                ("old-done", RunState.DONE, old),
                ("old-cancelled", RunState.CANCELLED, old),
                ("old-error", RunState.ERROR, old),
                ("new-done", RunState.DONE, new),
                ("old-done-leased", RunState.DONE, old),
            ]:
                stored = header(run_id, state=state, created_at=updated, updated_at=updated)
                await backend.create_run(stored, [created()])
            await backend.acquire_lease("old-done-leased", LeaseOwner.current(), ttl=30)
            cutoff = utcnow() - timedelta(days=1)
            assert await backend.prune(older_than=cutoff) == 2
            left = {h.run_id for h in (await backend.list_runs()).runs}
            assert left == {"old-error", "new-done", "old-done-leased"}
            assert await backend.prune(older_than=cutoff, states=[RunState.ERROR]) == 1
            assert await backend.prune(older_than=cutoff, states=[]) == 0
            with pytest.raises(RunNotFoundError):
                await backend.load_run("old-done")
            assert (await backend.list_runs(states=[RunState.CANCELLED])).runs == ()

        self.drive(request, body)

    def test_prune_looks_at_the_last_update_not_the_creation(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            old = utcnow() - timedelta(days=2)
            stored = header("r1", created_at=old, updated_at=old)
            await backend.create_run(stored, [created()])
            lease = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
            await backend.append(
                "r1", [step(2, RunState.DONE)], expected_seq=1, lease=lease, release=True
            )
            assert await backend.prune(older_than=utcnow() - timedelta(days=1)) == 0
            assert (await backend.get_run("r1")).state is RunState.DONE

        self.drive(request, body)


class PayloadTests(BackendTestCase):
    """Unicode, a 1 MB message, hundreds of runs at once."""

    def test_unicode_and_a_one_megabyte_message_round_trip(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            text = 'héllo wörld ✓ 日本語 🚀 \u0000 "quotes" \\ \n' + "x" * 1_000_000
            event = CreatedEvent(
                seq=1, state=RunState.PENDING, messages=(UserMessage(content=text),)
            )
            await backend.create_run(header("ünï-☃", user_id="ユーザー"), [event])
            loaded = await backend.load_run("ünï-☃")
            assert loaded.events == (event,)
            assert loaded.header.user_id == "ユーザー"
            assert _ids((await backend.list_runs(user_id="ユーザー")).runs) == ["ünï-☃"]
            lease = await backend.acquire_lease("ünï-☃", LeaseOwner.current(), ttl=30)
            answer = ModelResponseEvent(
                seq=2,
                state=RunState.DONE,
                trigger="final_answer",
                message=AssistantMessage(content=text[::-1]),
                model="scripted",
            )
            await backend.append("ünï-☃", [answer], expected_seq=1, lease=lease)
            assert (await backend.load_run("ünï-☃")).events[-1] == answer

        self.drive(request, body)

    def test_two_hundred_runs_are_created_listed_and_loaded(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            ids = [f"run-{i:03d}" for i in range(200)]
            leases = await asyncio.gather(*(new_run(backend, run_id) for run_id in ids))
            await asyncio.gather(
                *(
                    backend.append(run_id, [step(2)], expected_seq=1, lease=lease)
                    for run_id, lease in zip(ids, leases, strict=True)
                )
            )
            seen: list[str] = []
            cursor = None
            while True:
                page = await backend.list_runs(limit=64, cursor=cursor)
                seen.extend(_ids(page.runs))
                if (cursor := page.next_cursor) is None:
                    break
            assert sorted(seen) == ids
            assert len(set(seen)) == 200
            loaded = await asyncio.gather(*(backend.load_run(run_id) for run_id in ids))
            assert all(r.header.seq == 2 and len(r.events) == 2 for r in loaded)

        self.drive(request, body)


class LifecycleTests(BackendTestCase):
    """close, and use as an async context manager."""

    def test_a_closed_backend_refuses_calls_and_closes_again_quietly(
        self, request: pytest.FixtureRequest
    ) -> None:
        async def body(backend: Backend) -> None:
            await new_run(backend, "r1")
            await backend.close()
            await backend.close()
            with pytest.raises(StoreUnavailableError):
                await backend.load_run("r1")
            with pytest.raises(StoreUnavailableError):
                await backend.create_run(header("r2"), [created()])
            with pytest.raises(StoreUnavailableError):
                await backend.list_runs()

        self.drive(request, body)

    def test_backend_is_an_async_context_manager(self, request: pytest.FixtureRequest) -> None:
        async def body(backend: Backend) -> None:
            async with backend as store:
                await store.create_run(header("r1"), [created()])
            with pytest.raises(StoreUnavailableError):
                await backend.get_run("r1")

        self.drive(request, body)
