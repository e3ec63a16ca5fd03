"""The Backend contract, checked on every built-in backend (DESIGN.md §5).

Each test gets a fresh store from the ``backend`` fixture; MemoryBackend is the
reference, so a difference between backends fails here first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    LeaseLostError,
    RunBusyError,
    RunExistsError,
    RunNotFoundError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from durable_agent.records import (
    AssistantMessage,
    CreatedEvent,
    ModelResponseEvent,
    RunHeader,
    SystemMessage,
    UserMessage,
    utcnow,
)
from tests.backends.conftest import at, created, header, new_run, run, step


def test_created_run_loads_back_equal(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_create_run_with_a_taken_id_raises_and_keeps_the_first(backend: Backend) -> None:
    async def main() -> None:
        await backend.create_run(header("r1", agent_name="first"), [created("one")])
        with pytest.raises(RunExistsError, match="r1"):
            await backend.create_run(header("r1", agent_name="second"), [created("two")])
        loaded = await backend.load_run("r1")
        assert loaded.header.agent_name == "first"
        first = loaded.events[0]
        assert isinstance(first, CreatedEvent)
        assert first.messages[0].content == "one"

    run(main())


def test_append_with_the_expected_seq_stores_events_and_renews_the_lease(
    backend: Backend,
) -> None:
    async def main() -> None:
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

    run(main())


def test_append_of_several_events_is_all_or_nothing(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_append_of_no_events_only_renews_the_lease(backend: Backend) -> None:
    async def main() -> None:
        lease = await new_run(backend, "r1")
        renewed = await backend.append("r1", [], expected_seq=1, lease=lease)
        assert renewed.expires_at >= lease.expires_at
        loaded = await backend.load_run("r1")
        assert loaded.header.seq == 1
        assert loaded.header.state is RunState.PENDING

    run(main())


def test_append_with_a_stale_seq_raises_and_writes_nothing(backend: Backend) -> None:
    async def main() -> None:
        lease = await new_run(backend, "r1")
        lease = await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
        with pytest.raises(ConcurrentUpdateError, match="expected seq 1") as caught:
            await backend.append("r1", [step(2, RunState.TOOL_EXEC)], expected_seq=1, lease=lease)
        assert not isinstance(caught.value, LeaseLostError)
        loaded = await backend.load_run("r1")
        assert loaded.header.seq == 2
        assert loaded.events[-1].state is RunState.MODEL_CALL

    run(main())


def test_two_concurrent_appenders_of_one_seq_exactly_one_wins(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_unknown_run_raises_run_not_found(backend: Backend) -> None:
    async def main() -> None:
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
        await backend.release_lease("ghost", lease)  # a no-op
        assert await backend.delete_run("ghost") is False

    run(main())


# -- leases ---------------------------------------------------------------------------------


def test_acquire_increments_the_generation_and_a_live_lease_is_busy(backend: Backend) -> None:
    async def main() -> None:
        await backend.create_run(header("r1"), [created()])
        mine = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
        assert mine.generation == 1
        with pytest.raises(RunBusyError, match=mine.owner):
            await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
        stored = await backend.get_run("r1")
        assert stored.lease == mine
        assert stored.lease_generation == 1

    run(main())


def test_renew_extends_a_held_lease(backend: Backend) -> None:
    async def main() -> None:
        lease = await new_run(backend, "r1")
        renewed = await backend.renew_lease("r1", lease)
        assert renewed.generation == lease.generation
        assert renewed.expires_at >= lease.expires_at
        assert (await backend.get_run("r1")).lease == renewed

    run(main())


def test_expired_lease_is_taken_over_and_fences_the_old_writer(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_takeover_of_the_held_generation_is_granted_while_live(backend: Backend) -> None:
    async def main() -> None:
        old = await new_run(backend, "r1")
        with pytest.raises(RunBusyError):
            await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30, takeover=0)
        new = await backend.acquire_lease(
            "r1", LeaseOwner.current(), ttl=30, takeover=old.generation
        )
        assert new.generation == old.generation + 1
        with pytest.raises(LeaseLostError):
            await backend.append("r1", [step(2)], expected_seq=1, lease=old)

    run(main())


def test_append_with_the_same_generation_but_another_owner_is_refused(backend: Backend) -> None:
    async def main() -> None:
        lease = await new_run(backend, "r1")
        forged = lease.model_copy(update={"owner": "elsewhere:1:abc"})
        with pytest.raises(LeaseLostError):
            await backend.append("r1", [step(2)], expected_seq=1, lease=forged)
        assert (await backend.get_run("r1")).seq == 1

    run(main())


def test_released_lease_lets_another_owner_in_and_append_needs_a_lease(
    backend: Backend,
) -> None:
    async def main() -> None:
        lease = await new_run(backend, "r1")
        await backend.release_lease("r1", lease)
        stored = await backend.get_run("r1")
        assert stored.lease is None
        assert stored.lease_generation == lease.generation
        with pytest.raises(LeaseLostError, match="nobody"):
            await backend.append("r1", [step(2)], expected_seq=1, lease=lease)
        other = await backend.acquire_lease("r1", LeaseOwner.current(), ttl=30)
        assert other.generation == lease.generation + 1

    run(main())


# -- listing ----------------------------------------------------------------------------------


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


def _ids(headers: Sequence[RunHeader]) -> list[str]:
    return [h.run_id for h in headers]


def test_list_runs_filters_newest_first(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_list_runs_pages_with_a_cursor_without_gaps_or_repeats(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


def test_list_runs_rejects_a_bad_limit_or_cursor(backend: Backend) -> None:
    async def main() -> None:
        with pytest.raises(ConfigurationError, match="limit"):
            await backend.list_runs(limit=0)
        with pytest.raises(ConfigurationError, match="cursor"):
            await backend.list_runs(cursor="not-a-cursor")

    run(main())


# -- deleting ---------------------------------------------------------------------------------


def test_delete_run_removes_it_and_only_it(backend: Backend) -> None:
    async def main() -> None:
        await new_run(backend, "r1")
        await new_run(backend, "r2")
        assert await backend.delete_run("r1") is True
        assert await backend.delete_run("r1") is False
        with pytest.raises(RunNotFoundError):
            await backend.load_run("r1")
        assert (await backend.load_run("r2")).header.seq == 1
        assert _ids((await backend.list_runs()).runs) == ["r2"]
        # The id is free again, with no leftover events.
        await backend.create_run(header("r1"), [created("again")])
        assert len((await backend.load_run("r1")).events) == 1

    run(main())


def test_prune_deletes_old_finished_runs_but_keeps_live_leases(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


# -- payloads and scale -------------------------------------------------------------------------


def test_unicode_and_a_one_megabyte_message_round_trip(backend: Backend) -> None:
    async def main() -> None:
        text = 'héllo wörld ✓ 日本語 🚀 \u0000 "quotes" \\ \n' + "x" * 1_000_000
        event = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content=text),))
        await backend.create_run(header("ünï-☃", user_id="ユーザー"), [event])
        loaded = await backend.load_run("ünï-☃")
        assert loaded.events == (event,)
        assert loaded.header.user_id == "ユーザー"
        assert _ids((await backend.list_runs(user_id="ユーザー")).runs) == ["ünï-☃"]

    run(main())


def test_two_hundred_runs_are_created_listed_and_loaded(backend: Backend) -> None:
    async def main() -> None:
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

    run(main())


# -- lifecycle ---------------------------------------------------------------------------------


def test_a_closed_backend_refuses_calls_and_closes_again_quietly(backend: Backend) -> None:
    async def main() -> None:
        await new_run(backend, "r1")
        await backend.close()
        await backend.close()
        with pytest.raises(StoreUnavailableError):
            await backend.load_run("r1")
        with pytest.raises(StoreUnavailableError):
            await backend.create_run(header("r2"), [created()])
        with pytest.raises(StoreUnavailableError):
            await backend.list_runs()

    run(main())


def test_backend_is_an_async_context_manager(backend: Backend) -> None:
    async def main() -> None:
        async with backend as store:
            await store.create_run(header("r1"), [created()])
        with pytest.raises(StoreUnavailableError):
            await backend.get_run("r1")

    run(main())
