"""Interrupting a run: cancellation (of a waiting run, a running one, elsewhere), deadlines,
the caller's own cancellation, and an append cut short by it.

Each leaves a stored record of what happened (CANCELLED, or ERROR with the failed
state) and a run that can be continued where that makes sense.
"""

from __future__ import annotations

import asyncio

import pytest

from durable_agent import (
    Agent,
    RunCancelledError,
    RunState,
    RunTimeoutError,
    ScriptedModel,
    Task,
    ToolCall,
)
from durable_agent.records import CancelledEvent, FailedEvent
from tests._barriers import wait_until_async
from tests.engine.conftest import StoreFactory, run
from tests.engine.refunds import REFUND, Refunds, agent_for

# -- cancellation ----------------------------------------------------------------


def test_a_waiting_run_is_cancelled_at_once_and_cannot_be_continued(
    store: StoreFactory,
) -> None:
    agent = agent_for(store, Refunds(), [REFUND, "ok"])
    out = run(agent.do_async("x", return_output=True))
    cancelled = run(agent.cancel_run_async(out.run_id, reason="customer withdrew"))
    assert cancelled.state is RunState.CANCELLED
    last = run(store().load_run(out.run_id)).events[-1]
    assert isinstance(last, CancelledEvent)
    assert (last.reason, last.from_state) == ("customer withdrew", RunState.WAITING)
    with pytest.raises(RunCancelledError, match="customer withdrew"):
        run(agent.continue_run_async(run_id=out.run_id))


def test_a_running_run_stops_at_the_next_boundary_when_cancelled_elsewhere(
    store: StoreFactory,
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(step: str) -> str:
        """A slow step."""
        entered.set()
        await release.wait()
        finished.append(step)
        return step

    model = ScriptedModel([ToolCall("slow", {"step": "one"}), ToolCall("slow", {"step": "two"}),
                           "never"])
    agent = Agent(model, db=store(), tools=[slow])
    # Another agent object: it shares this process's lease owner, and the run
    # is driven by another task of this process, so it only records the request.
    canceller = Agent(ScriptedModel(["x"]), db=store())

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async("go", return_output=True))
        await entered.wait()
        assert agent.last_run is not None  # set before the first write: the id is known
        run_id = (await store().list_runs(states=[RunState.TOOL_EXEC])).runs[0].run_id
        assert agent.last_run.run_id == run_id
        pending = await canceller.cancel_run_async(run_id, reason="stop")
        assert pending.state is RunState.TOOL_EXEC, "the holder records CANCELLED itself"
        release.set()
        out = await running
        assert out.state is RunState.CANCELLED

    run(scenario())
    assert finished == ["one"], "the current call finished; no further call started"
    assert model.calls == 1
    assert agent.last_run is not None
    events = run(store().load_run(agent.last_run.run_id)).events
    assert [e.kind for e in events][-2:] == ["tool_finished", "cancelled"] or [
        e.kind for e in events
    ][-1] == "cancelled"
    assert any(e.kind == "tool_finished" for e in events), "history complete"


def test_cancelling_a_finished_run_is_refused(store: StoreFactory) -> None:
    from durable_agent import RunStateError

    agent = agent_for(store, Refunds(), ["done"])
    out = run(agent.do_async("x", return_output=True))
    with pytest.raises(RunStateError, match="finished run cannot be cancelled"):
        run(agent.cancel_run_async(out.run_id))


# -- deadlines and outer cancellation -------------------------------------------


def test_a_timeout_is_recorded_and_the_run_can_be_continued(store: StoreFactory) -> None:
    calls: list[int] = []

    async def slow() -> str:
        """Slow the first time."""
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(30)
        return "fast now"

    agent = Agent(ScriptedModel([ToolCall("slow"), "finished"]), db=store(), tools=[slow])
    task = Task("x")
    # The deadline must pass inside the tool: 2 s leaves a loaded machine ample time to
    # get there (a model answer and two writes), and the test waits it out once.
    with pytest.raises(RunTimeoutError, match=r"deadline of 2\.0 s") as raised:
        run(agent.do_async(task, timeout=2.0))
    assert isinstance(raised.value, TimeoutError)
    assert task.run_id is not None
    stored = run(store().load_run(task.run_id))
    assert stored.header.state is RunState.ERROR
    last = stored.events[-1]
    assert isinstance(last, FailedEvent)
    assert last.error.type.endswith("RunTimeoutError")
    assert last.failed_state is RunState.TOOL_EXEC
    assert run(agent.continue_run_async(task=task)) == "finished"


def test_an_outer_cancellation_propagates_and_leaves_a_resumable_run(
    store: StoreFactory,
) -> None:
    model = ScriptedModel(["late answer"], delay=30)
    agent = Agent(model, db=store())
    task = Task("x")

    triggers: list[asyncio.Task[None]] = []

    async def expire_once_asked(deadline: asyncio.Timeout) -> None:
        # The caller's deadline passes while the run waits for its model.
        await wait_until_async(lambda: model.calls == 1, awaiting="the run's model request")
        deadline.reschedule(asyncio.get_running_loop().time())

    async def under_a_deadline() -> None:
        async with asyncio.timeout(None) as deadline:
            triggers.append(asyncio.create_task(expire_once_asked(deadline)))
            await agent.do_async(task)

    async def outer() -> None:
        with pytest.raises(TimeoutError):
            await under_a_deadline()
        await triggers[0]

    run(outer())
    assert task.run_id is not None
    header = run(store().get_run(task.run_id))
    assert header.state is RunState.ERROR
    assert header.lease is None, "the lease is released on the way out"
    quick = Agent(ScriptedModel(["late answer"]), db=store())
    assert run(quick.continue_run_async(task=task)) == "late answer"


class _SlowAppends:
    """A MemoryBackend whose appends pause before or after writing, to be cut short."""

    @staticmethod
    def build(pause: str) -> object:
        from durable_agent.backends.memory import MemoryBackend

        class Slow(MemoryBackend):
            entered = asyncio.Event()

            async def append(self, run_id, events, *, expected_seq, lease, release=False):  # type: ignore[no-untyped-def]
                if self.entered.is_set() or not any(e.kind == "tool_finished" for e in events):
                    return await super().append(
                        run_id, events, expected_seq=expected_seq, lease=lease, release=release
                    )
                if pause == "before":
                    self.entered.set()
                    await asyncio.sleep(30)
                renewed = await super().append(
                    run_id, events, expected_seq=expected_seq, lease=lease, release=release
                )
                self.entered.set()
                await asyncio.sleep(30)  # the write landed; the caller is cut off now
                return renewed

        return Slow()


@pytest.mark.parametrize("pause", ["before", "after"])
def test_an_append_cut_short_by_cancellation_is_settled_by_the_store(pause: str) -> None:
    db = _SlowAppends.build(pause)
    calls: list[str] = []

    async def step(name: str) -> str:
        """A step."""
        calls.append(name)
        return name

    model = ScriptedModel([ToolCall("step", {"name": "a"}), "done"])
    agent = Agent(model, db=db, tools=[step])  # type: ignore[arg-type]
    task = Task("go")

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async(task))
        await db.entered.wait()  # type: ignore[attr-defined]  # inside the tool result's append
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    run(scenario())
    assert task.run_id is not None
    stored = run(db.load_run(task.run_id))  # type: ignore[attr-defined]
    seqs = [e.seq for e in stored.events]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate"
    assert stored.header.state is RunState.ERROR, "the interruption is recorded"
    landed = any(e.kind == "tool_finished" for e in stored.events)
    assert landed is (pause == "after")
    assert stored.header.lease is None
    out = run(agent.continue_run_async(task=task, return_output=True))
    assert out.state is RunState.DONE
    assert calls == (["a"] if pause == "after" else ["a", "a"])


def test_a_cancellation_reaches_the_canceller_even_when_the_record_fails() -> None:
    from durable_agent import StoreUnavailableError
    from durable_agent.backends.memory import MemoryBackend

    class Failing(MemoryBackend):
        broken = False

        async def append(self, run_id, events, *, expected_seq, lease, release=False):  # type: ignore[no-untyped-def]
            if self.broken:
                raise StoreUnavailableError("store went away")
            return await super().append(
                run_id, events, expected_seq=expected_seq, lease=lease, release=release
            )

    db = Failing()
    model = ScriptedModel(["late"], delay=30)
    agent = Agent(model, db=db)

    async def scenario() -> None:
        running = asyncio.ensure_future(agent.do_async("x"))
        await wait_until_async(lambda: model.calls == 1, awaiting="the run's model request")
        db.broken = True
        running.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await running
        notes = getattr(raised.value, "__notes__", [])
        assert any("could not be recorded" in n and "store went away" in n for n in notes)

    run(scenario())
