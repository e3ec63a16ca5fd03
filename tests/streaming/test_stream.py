"""`Agent.stream_async` / `continue_stream_async` with `ScriptedModel`: what a consumer sees."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    ChatModel,
    ConfigurationError,
    ModelResponse,
    OutputSchema,
    RunFailedError,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    ToolDefinition,
    follow,
    tool,
)
from durable_agent.models import ModelDelta
from durable_agent.records import (
    AssistantMessage,
    FailedEvent,
    Message,
    ModelResponseEvent,
    Usage,
)
from durable_agent.streaming import (
    AnswerRecorded,
    Finished,
    ModelCallStarted,
    Paused,
    StateChanged,
    StoredEvent,
    StreamEvent,
    TextDelta,
    ToolCallsAsked,
    ToolFinished,
    ToolStarted,
    WaitingForHuman,
)
from tests._barriers import wait_until_async

ANSWER = "Seven plus seven is fourteen, and that is the whole answer."


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _agent(tmp_path: Path, script: Sequence[object], **options: object) -> Agent:
    model = ScriptedModel(script, chunk_size=options.pop("chunk_size", 5))  # type: ignore[arg-type]
    return Agent(model, db=f"sqlite:///{tmp_path / 'runs.db'}", tools=[add], **options)  # type: ignore[arg-type]


async def _collect(stream: object) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    async with stream as opened:  # type: ignore[attr-defined]
        async for event in opened:
            events.append(event)
    return events


def test_deltas_joined_are_the_stored_answer_and_every_record_is_yielded_once(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        agent = _agent(tmp_path, [ToolCall("add", {"a": 7, "b": 7}), ANSWER])
        stream = agent.stream_async("What is 7 + 7?")
        events = await _collect(stream)
        stored = await agent.db.load_run(stream.run_id)
        seqs = [e.seq for e in events if isinstance(e, StoredEvent)]
        assert seqs == [e.seq for e in stored.events]
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        final = stored.events[-1]
        assert isinstance(final, ModelResponseEvent)
        assert text == final.message.content == ANSWER
        assert len([e for e in events if isinstance(e, TextDelta)]) > 2  # really in chunks
        kinds = [type(e) for e in events if not isinstance(e, TextDelta | ModelCallStarted)]
        assert ToolCallsAsked in kinds
        assert ToolStarted in kinds
        assert ToolFinished in kinds
        asked = next(e for e in events if isinstance(e, ToolCallsAsked))
        assert asked.calls[0].name == "add"
        finished = next(e for e in events if isinstance(e, ToolFinished))
        assert finished.result == "14"
        assert isinstance(events[-1], Finished)
        assert stream.output is events[-1].output
        assert stream.output.output == ANSWER
        assert stream.output.state is RunState.DONE
        assert stream.last_seq == stored.header.seq
        # The same run as an unstreamed one: same output, same records.
        plain = _agent(tmp_path / "plain", [ToolCall("add", {"a": 7, "b": 7}), ANSWER])
        output = await plain.do_async("What is 7 + 7?", return_output=True)
        assert output.output == stream.output.output
        assert output.usage == stream.output.usage
        again = await plain.db.load_run(output.run_id)
        assert [e.kind for e in again.events] == [e.kind for e in stored.events]
        await agent.close_async()
        await plain.close_async()

    (tmp_path / "plain").mkdir()
    asyncio.run(main())


def test_previous_and_state_follow_the_log(tmp_path: Path) -> None:
    async def main() -> None:
        agent = _agent(tmp_path, [ToolCall("add", {"a": 1, "b": 2}), "3"])
        everything = await _collect(agent.stream_async("1+2"))
        events = [e for e in everything if isinstance(e, StoredEvent)]
        for before, after in itertools.pairwise(events):
            assert after.previous is before.state
        changes = [(e.previous, e.state) for e in events if e.changed_state]
        assert (RunState.PENDING, RunState.MODEL_CALL) in changes
        assert (RunState.MODEL_CALL, RunState.TOOL_EXEC) in changes
        assert any(isinstance(e, StateChanged) for e in events)
        assert all(e.as_json()["seq"] == e.seq for e in events)
        await agent.close_async()

    asyncio.run(main())


def test_a_pause_for_a_human_ends_the_stream_and_continuing_streams_the_rest(
    tmp_path: Path,
) -> None:
    ran: list[str] = []

    @tool(requires_confirmation=True)
    def refund(order: str) -> str:
        """Refund an order."""
        ran.append(order)
        return f"refunded {order}"

    async def main() -> None:
        model = ScriptedModel([ToolCall("refund", {"order": "A1"}), "Refunded A1."])
        agent = Agent(model, db=f"sqlite:///{tmp_path / 'h.db'}", tools=[refund])
        task = Task("Refund A1")
        events = await _collect(agent.stream_async(task))
        paused = events[-1]
        assert isinstance(paused, Paused)
        assert any(isinstance(e, WaitingForHuman) for e in events)
        assert paused.output.state is RunState.WAITING
        [requirement] = paused.requirements
        assert paused.as_json()["requirements"][0]["tool_name"] == "refund"  # type: ignore[index]
        assert ran == []
        requirement.confirm()
        rest = await _collect(agent.continue_stream_async(task=task, requirements=[requirement]))
        assert ran == ["A1"]
        assert isinstance(rest[-1], Finished)
        assert rest[-1].output.output == "Refunded A1."
        assert "".join(e.text for e in rest if isinstance(e, TextDelta)) == "Refunded A1."
        await agent.close_async()

    asyncio.run(main())


def test_leaving_early_records_the_interruption_and_continue_finishes(tmp_path: Path) -> None:
    async def main() -> None:
        model = ScriptedModel([ANSWER], chunk_size=3, chunk_delay=0.05)
        agent = Agent(model, db=f"sqlite:///{tmp_path / 'b.db'}")
        async with agent.stream_async("talk") as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
        stored = await agent.db.load_run(stream.run_id)
        assert stored.header.state is RunState.ERROR
        failed = stored.events[-1]
        assert isinstance(failed, FailedEvent)
        assert "CancelledError" in failed.error.type
        assert failed.failed_state is RunState.MODEL_CALL
        assert stored.header.lease is None
        events = await _collect(agent.continue_stream_async(stream.run_id))
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER
        await agent.close_async()

    asyncio.run(main())


def test_a_stream_dropped_mid_run_cancels_it_and_records_the_interruption(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        model = ScriptedModel([ANSWER], chunk_size=3, chunk_delay=0.05)
        agent = Agent(model, db=f"sqlite:///{tmp_path / 'd.db'}")
        stream = agent.stream_async("talk")
        run_id = stream.run_id
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        del stream
        gc.collect()

        async def interrupted() -> bool:
            return (await agent.db.get_run(run_id)).state is RunState.ERROR

        await wait_until_async(interrupted, awaiting="the dropped stream's run to record ERROR")
        await agent.close_async()

    asyncio.run(main())


def test_a_slow_consumer_loses_nothing_and_does_not_hold_the_run_back(tmp_path: Path) -> None:
    async def main() -> None:
        script = [ToolCall("add", {"a": i, "b": i}) for i in range(5)] + [ANSWER]
        agent = _agent(tmp_path, script, chunk_size=2)
        stream = agent.stream_async("count")
        async with stream:
            first = await anext(stream)  # then read nothing until the run is over

            async def done() -> bool:
                return (await agent.db.get_run(stream.run_id)).state is RunState.DONE

            await wait_until_async(done, awaiting="the run to finish with nobody reading")
            events = [first, *[e async for e in stream]]
        stored = await agent.db.load_run(stream.run_id)
        assert [e.seq for e in events if isinstance(e, StoredEvent)] == [
            e.seq for e in stored.events
        ]
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
        assert isinstance(events[-1], Finished)
        await agent.close_async()

    asyncio.run(main())


def test_a_failure_is_yielded_as_its_record_then_raised(tmp_path: Path) -> None:
    async def main() -> None:
        model = ScriptedModel(
            ["never"], failures=[ScriptedFailure(0, ValueError("bad request"), times=5)]
        )
        agent = Agent(model, db=f"sqlite:///{tmp_path / 'f.db'}", retry=1)
        seen: list[StreamEvent] = []
        stream = agent.stream_async("fail")

        async def consume() -> None:
            async with stream:
                async for event in stream:
                    seen.append(event)

        with pytest.raises(RunFailedError, match="bad request"):
            await consume()
        assert isinstance(seen[-1], StoredEvent)
        assert isinstance(seen[-1].record, FailedEvent)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        await agent.close_async()

    asyncio.run(main())


class _Plain(ChatModel):
    """A model without a stream of its own."""

    @property
    def name(self) -> str:
        return "plain"

    async def request(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolDefinition],
        output_schema: OutputSchema | None = None,
    ) -> ModelResponse:
        return ModelResponse(
            message=AssistantMessage(content="whole"), model="plain", usage=Usage(requests=1)
        )


def test_a_model_that_does_not_stream_gives_its_answer_as_one_delta(tmp_path: Path) -> None:
    async def main() -> None:
        agent = Agent(_Plain(), db=f"sqlite:///{tmp_path / 'p.db'}")
        events = await _collect(agent.stream_async("hi"))
        assert [e.text for e in events if isinstance(e, TextDelta)] == ["whole"]
        chunks = [c async for c in _Plain().stream([], tools=[])]
        assert chunks[0] == ModelDelta("whole")
        assert isinstance(chunks[1], ModelResponse)
        await agent.close_async()

    asyncio.run(main())


def test_follow_in_process_sees_every_stored_event_once_and_resumes_after_a_seq(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        agent = _agent(tmp_path, [ToolCall("add", {"a": 2, "b": 2}), ANSWER])
        task = Task("2+2")
        events = await _collect(agent.stream_async(task))
        assert task.run_id is not None
        stored = await agent.db.load_run(task.run_id)
        followed = [e async for e in agent.follow(task.run_id)]
        assert [e.seq for e in followed if isinstance(e, StoredEvent)] == [
            e.seq for e in stored.events
        ]
        assert isinstance(followed[-1], Finished)
        assert followed[-1].output.output == ANSWER
        tail = [e async for e in follow(agent.db, task.run_id, after_seq=4)]
        assert [e.seq for e in tail if isinstance(e, StoredEvent)] == list(
            range(5, stored.header.seq + 1)
        )
        assert isinstance(tail[0], StoredEvent)
        assert tail[0].previous is stored.events[3].state
        assert events[-1].as_json()["output"] == ANSWER  # type: ignore[union-attr]
        with pytest.raises(ConfigurationError):
            [e async for e in follow(agent.db, task.run_id, after_seq=-1)]
        with pytest.raises(ConfigurationError, match="has 7 events"):
            [e async for e in follow(agent.db, task.run_id, after_seq=99)]
        await agent.close_async()

    asyncio.run(main())


def test_follow_while_the_run_streams_in_the_same_process(tmp_path: Path) -> None:
    async def main() -> None:
        script = [ToolCall("add", {"a": 1, "b": 1}), ANSWER]
        model = ScriptedModel(script, chunk_size=4, chunk_delay=0.01)
        agent = Agent(model, db=f"sqlite:///{tmp_path / 'w.db'}", tools=[add])
        stream = agent.stream_async("1+1")
        async with stream:
            await anext(stream)  # the run exists
            followed = [e async for e in follow(agent.db, stream.run_id, poll=0.005)]
            await stream.until_done()
        stored = await agent.db.load_run(stream.run_id)
        assert [e.seq for e in followed if isinstance(e, StoredEvent)] == [
            e.seq for e in stored.events
        ]
        answer = next(e for e in followed if isinstance(e, AnswerRecorded))
        assert answer.message.content == ANSWER
        await agent.close_async()

    asyncio.run(main())


def test_stream_arguments_are_checked(tmp_path: Path) -> None:
    agent = Agent(ScriptedModel(["x"]), db=f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(ConfigurationError):
        agent.stream_async(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        agent.continue_stream_async()
    with pytest.raises(ConfigurationError):
        agent.continue_stream_async(task="not a task")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ScriptedModel(["x"], chunk_size=0)
    agent.close()


@pytest.mark.parametrize("scheme", ["sqlite", "file", "memory"])
def test_follow_polls_every_store_while_the_run_streams(tmp_path: Path, scheme: str) -> None:
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'runs.db'}",
        "file": f"file://{tmp_path / 'runs'}",
        "memory": "memory://",
    }[scheme]

    async def main() -> None:
        model = ScriptedModel([ToolCall("add", {"a": 3, "b": 4}), ANSWER],
                              chunk_size=4, chunk_delay=0.005)
        agent = Agent(model, db=url, tools=[add])
        stream = agent.stream_async("3+4")
        async with stream:
            await anext(stream)
            followed = [e async for e in agent.follow(stream.run_id)]
            await stream.until_done()
        stored = await agent.db.load_run(stream.run_id)
        assert [e.seq for e in followed if isinstance(e, StoredEvent)] == [
            e.seq for e in stored.events
        ]
        assert not [e for e in followed if e.ephemeral], "only Redis relays deltas"
        await agent.close_async()

    asyncio.run(main())


def test_a_store_without_relay_publishes_nothing_and_subscribes_to_nothing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        from durable_agent import Capability
        from durable_agent.backends.sqlite import SqliteBackend

        backend = SqliteBackend(str(tmp_path / "r.db"))
        assert Capability.RELAY not in backend.capabilities
        await backend.publish_ephemeral("any", "message")  # a no-op, never an error
        assert backend.subscribe_ephemeral("any") is None
        await backend.close()

    asyncio.run(main())


def test_follow_of_an_unknown_run_raises(tmp_path: Path) -> None:
    async def main() -> None:
        from durable_agent import RunNotFoundError

        agent = Agent(ScriptedModel(["x"]), db=f"sqlite:///{tmp_path / 'u.db'}")
        with pytest.raises(RunNotFoundError):
            [e async for e in agent.follow("nope")]
        await agent.close_async()

    asyncio.run(main())
