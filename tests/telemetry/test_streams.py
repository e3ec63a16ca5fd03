"""Streamed model attempts through the real OpenAI SDK and the fake server: chunk metrics, cuts."""

from __future__ import annotations

import asyncio
from typing import Any

from durable_agent import Agent, RetryPolicy
from durable_agent.models.openai import OpenAIModel
from durable_agent.streaming import StreamEvent, TextDelta, TextDiscarded
from durable_agent.testing import FakeOpenAIServer, Fault, Reply
from tests.telemetry.conftest import Recorded

ANSWER = "ANSWERMARK: it is sunny in Oslo today, with a light breeze from the fjord."
CUT = "CUTMARK: this answer is cut off"
PROMPT = "PROMPTMARK: weather in Oslo?"
FIRST = "gen_ai.client.operation.time_to_first_chunk"
PER_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
FAST = RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.01)


def _streamed(script: list[Any], *, retry: RetryPolicy | int = FAST) -> list[StreamEvent]:
    """Stream one run of ``script`` from the fake OpenAI server; return what the consumer saw."""

    async def main(base_url: str) -> list[StreamEvent]:
        model = OpenAIModel("gpt-4o-mini", base_url=base_url, api_key="sk-test")
        agent = Agent(model, db="memory://", name="streamer", retry=retry)
        events: list[StreamEvent] = []
        async with agent.stream_async(PROMPT) as stream:
            async for event in stream:
                events.append(event)
        return events

    with FakeOpenAIServer(script).running_in_thread() as server:
        return asyncio.run(main(server.base_url))


def _deltas(events: list[StreamEvent], attempt: int) -> list[TextDelta]:
    return [e for e in events if isinstance(e, TextDelta) and e.attempt == attempt]


def test_a_streamed_attempt_times_its_first_chunk_and_each_chunk_after_it(
    recorded: Recorded,
) -> None:
    events = _streamed([Reply(text=ANSWER, chunk_size=6)])
    deltas = _deltas(events, 1)
    assert len(deltas) == -(-len(ANSWER) // 6) > 2
    (chat,) = recorded.spans("chat gpt-4o-mini")
    attrs = chat.attributes or {}
    assert attrs["durable_agent.stream.chunks"] == len(deltas)
    first = attrs["gen_ai.response.time_to_first_chunk"]
    assert isinstance(first, float)
    assert 0 < first <= (chat.end_time - chat.start_time) / 1e9  # type: ignore[operator]
    model = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini"}
    # One first chunk per attempt; every chunk after it timed from the one before.
    assert recorded.total(FIRST, **model) == 1
    assert recorded.total(PER_CHUNK, **model) == len(deltas) - 1
    assert "error.type" not in attrs
    assert not [e for e in chat.events if e.name == "durable_agent.stream.discarded"]


def test_an_attempt_that_is_not_streamed_reports_no_chunk_metrics(recorded: Recorded) -> None:
    with FakeOpenAIServer([Reply(text=ANSWER)]).running_in_thread() as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key="sk-test")
        agent = Agent(model, db="memory://", name="plain")
        assert agent.do(PROMPT) == ANSWER
    (chat,) = recorded.spans("chat gpt-4o-mini")
    assert "gen_ai.response.time_to_first_chunk" not in (chat.attributes or {})
    assert recorded.points(FIRST) == []
    assert recorded.points(PER_CHUNK) == []


def test_a_stream_cut_mid_way_records_its_error_and_the_chunks_discarded_then_retries(
    recorded: Recorded,
) -> None:
    events = _streamed([Fault.cut_stream(3, text=CUT), Reply(text=ANSWER, chunk_size=6)])
    cut, kept = _deltas(events, 1), _deltas(events, 2)
    assert len(cut) == 3
    assert [d.text for d in events if isinstance(d, TextDiscarded)] == [
        "".join(d.text for d in cut)
    ]
    first, second = recorded.spans("chat gpt-4o-mini")
    attrs = first.attributes or {}
    assert attrs["durable_agent.attempt"] == 1
    assert str(attrs["error.type"]).startswith("durable_agent.errors.")
    (discarded,) = [e for e in first.events if e.name == "durable_agent.stream.discarded"]
    assert discarded.attributes is not None
    assert discarded.attributes["durable_agent.stream.chunks_discarded"] == len(cut)
    assert discarded.attributes["error.type"] == attrs["error.type"]
    assert "durable_agent.stream.discarded_text" not in discarded.attributes
    assert (second.attributes or {})["durable_agent.attempt"] == 2
    assert "error.type" not in (second.attributes or {})
    assert (second.attributes or {})["durable_agent.stream.chunks"] == len(kept)
    # Both attempts' chunks are timed: each has a first chunk, the rest follow it.
    assert recorded.total(FIRST) == 2
    assert recorded.total(PER_CHUNK) == len(cut) - 1 + len(kept) - 1
    assert recorded.total("durable_agent.model.attempts.failed") == 1
    # Content capture is off: no prompt, streamed text or answer in any attribute.
    text = recorded.text()
    for mark in ("PROMPTMARK", "CUTMARK", "ANSWERMARK"):
        assert mark not in text


def test_with_content_capture_the_discarded_text_is_on_the_event(recorded: Recorded) -> None:
    recorded.capture()
    events = _streamed([Fault.cut_stream(2, text=CUT), Reply(text=ANSWER)])
    shown = "".join(d.text for d in _deltas(events, 1))
    assert shown
    first, _ = recorded.spans("chat gpt-4o-mini")
    (discarded,) = [e for e in first.events if e.name == "durable_agent.stream.discarded"]
    assert (discarded.attributes or {})["durable_agent.stream.discarded_text"] == shown
