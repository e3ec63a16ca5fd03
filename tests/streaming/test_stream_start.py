"""How a streamed run starts: what the store is asked before its first model call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from durable_agent import Agent, RunState, ScriptedModel, Task
from durable_agent.backends.memory import MemoryBackend
from durable_agent.records import Event, RunHeader, StoredRun
from durable_agent.run import RunContext, RunOutput
from durable_agent.streaming import Finished, StreamEvent

ANSWER = "Fourteen."


class CountingBackend(MemoryBackend):
    """A memory store that lists the calls made to it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        self.calls.append("create_run")
        await super().create_run(header, events)

    async def load_run(self, run_id: str) -> StoredRun:
        self.calls.append("load_run")
        return await super().load_run(run_id)

    async def get_run(self, run_id: str) -> RunHeader:
        self.calls.append("get_run")
        return await super().get_run(run_id)


async def _collect(agent: Agent, task: Task | str) -> list[StreamEvent]:
    async with agent.stream_async(task) as stream:
        return [event async for event in stream]


def test_a_streamed_run_under_a_fresh_id_is_created_without_reading_the_store_first() -> None:
    async def main() -> None:
        db = CountingBackend()
        agent = Agent(ScriptedModel([ANSWER]), db=db)
        events = await _collect(agent, "What is 7 + 7?")
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER
        # The stream chose the id itself: no run can be stored under it yet.
        assert db.calls[0] == "create_run"

    asyncio.run(main())


def test_a_streamed_run_under_a_chosen_id_continues_the_run_stored_under_it() -> None:
    async def main() -> None:
        db = CountingBackend()
        first = Agent(ScriptedModel([ANSWER]), db=db)
        done = await first.do_async(Task("What is 7 + 7?", run_id="chosen-1"), return_output=True)
        # No answer left to give: a second model call would fail the run.
        again = Agent(ScriptedModel([]), db=db)
        db.calls.clear()
        events = await _collect(again, Task("What is 7 + 7?", run_id="chosen-1"))
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == done.output == ANSWER
        assert "create_run" not in db.calls

    asyncio.run(main())


def test_a_streamed_run_under_a_chosen_id_not_stored_yet_is_created_under_it() -> None:
    async def main() -> None:
        db = CountingBackend()
        agent = Agent(ScriptedModel([ANSWER]), db=db)
        events = await _collect(agent, Task("What is 7 + 7?", run_id="chosen-2"))
        assert isinstance(events[-1], Finished)
        assert (await db.get_run("chosen-2")).state is RunState.DONE

    asyncio.run(main())


def test_the_pending_output_is_the_snapshot_of_an_empty_context() -> None:
    empty = RunContext(run_id="r1", session_id="s1", user_id="u1")
    assert RunOutput.pending("r1", "s1", "u1") == RunOutput.from_context(empty)
