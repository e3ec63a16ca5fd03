"""Streaming through the real SDKs against the fake servers: deltas, usage, cuts, retries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, RetryPolicy, RunFailedError, RunState, ToolCall
from durable_agent.models import ModelDelta, _anthropic_stream, _openai_stream
from durable_agent.records import (
    FailedEvent,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    UserMessage,
)
from durable_agent.streaming import (
    Finished,
    ModelCallStarted,
    StoredEvent,
    StreamEvent,
    TextDelta,
    TextDiscarded,
)
from durable_agent.testing import Fault, Reply
from tests.providers.conftest import FAST, FakeServer, Ledger, Provider, StoreFactory, run, serve

ANSWER = "It is sunny in Oslo today, with a light breeze from the fjord."


async def _consume(stream: Any) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    async with stream:
        async for event in stream:
            events.append(event)
    return events


def _text(events: list[StreamEvent], attempt: int | None = None) -> str:
    return "".join(
        e.text for e in events if isinstance(e, TextDelta) and attempt in (None, e.attempt)
    )


def test_the_deltas_joined_are_the_stored_message_with_its_usage(
    provider: Provider, store: StoreFactory
) -> None:
    ledger = Ledger()
    server = provider.server(
        [
            ToolCall("lookup", {"city": "Oslo"}),
            Reply(text=ANSWER, chunk_size=6, input_tokens=123, output_tokens=45),
        ]
    )

    async def body(server: FakeServer) -> None:
        agent = Agent(provider.model(server), db=store(), tools=ledger.tools(), retry=FAST)
        stream = agent.stream_async("Weather in Oslo?")
        events = await _consume(stream)
        stored = await agent.db.load_run(stream.run_id)
        final = stored.events[-1]
        assert isinstance(final, ModelResponseEvent)
        assert _text(events) == final.message.content == ANSWER
        assert len([e for e in events if isinstance(e, TextDelta)]) >= len(ANSWER) // 6
        assert final.usage.input_tokens == 123
        assert final.usage.output_tokens == 45
        assert [e.seq for e in events if isinstance(e, StoredEvent)] == [
            e.seq for e in stored.events
        ]
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER
        assert ledger.calls["Oslo"] == 1
        for request in server.requests:
            assert request.body["stream"] is True
        if provider.name == "openai":
            assert server.requests[0].body["stream_options"] == {"include_usage": True}

    run(serve(server, body))


def test_streamed_tool_call_arguments_arrive_whole(provider: Provider) -> None:
    server = provider.server(
        [Reply(tool_calls=[ToolCall("lookup", {"city": "Sør-Trøndelag", "days": [1, 2, 3]})],
               chunk_size=3)]
    )

    async def body(server: FakeServer) -> None:
        model = provider.model(server)
        items = [i async for i in model.stream([UserMessage(content="go")], tools=[])]
        [call] = items[-1].message.tool_calls  # type: ignore[union-attr]
        assert call.name == "lookup"
        assert call.arguments == {"city": "Sør-Trøndelag", "days": [1, 2, 3]}

    run(serve(server, body))


def test_a_cut_mid_stream_with_retry_2_is_retried_once_and_stored_once(
    provider: Provider, store: StoreFactory
) -> None:
    server = provider.server([Fault.cut_stream(2), Reply(text=ANSWER)])

    async def body(server: FakeServer) -> None:
        policy = RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.01)
        agent = Agent(provider.model(server), db=store(), retry=policy)
        stream = agent.stream_async("Weather?")
        events = await _consume(stream)
        stored = await agent.db.load_run(stream.run_id)
        failed = [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]
        answers = [e for e in stored.events if isinstance(e, ModelResponseEvent)]
        assert len(failed) == 1
        assert failed[0].error.retryable
        assert len(answers) == 1
        assert answers[0].attempt == 2
        assert answers[0].message.content == ANSWER == _text(events, attempt=2)
        discarded = [e for e in events if isinstance(e, TextDiscarded)]
        assert [d.text for d in discarded] == [_text(events, attempt=1)]
        assert discarded[0].text  # the consumer had seen text of the cut attempt
        starts = [e.attempt for e in events if isinstance(e, ModelCallStarted)]
        assert starts == [1, 2]
        assert len(server.requests) == 2

    run(serve(server, body))


def test_a_cut_mid_stream_with_retry_1_records_error_and_continue_finishes(
    provider: Provider, store: StoreFactory
) -> None:
    server = provider.server([Fault.cut_stream(1), Reply(text=ANSWER)])

    async def body(server: FakeServer) -> None:
        agent = Agent(provider.model(server), db=store(), retry=1)
        stream = agent.stream_async("Weather?")
        with pytest.raises(RunFailedError):
            await _consume(stream)
        stored = await agent.db.load_run(stream.run_id)
        assert stored.header.state is RunState.ERROR
        assert isinstance(stored.events[-1], FailedEvent)
        assert not [e for e in stored.events if isinstance(e, ModelResponseEvent)]
        events = await _consume(agent.continue_stream_async(stream.run_id))
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER == _text(events)

    run(serve(server, body))


def test_an_error_event_mid_stream_is_retried(provider: Provider, store: StoreFactory) -> None:
    server = provider.server([Fault.stream_error(1, status=529), Reply(text=ANSWER)])

    async def body(server: FakeServer) -> None:
        agent = Agent(provider.model(server), db=store(), retry=FAST)
        stream = agent.stream_async("Weather?")
        events = await _consume(stream)
        stored = await agent.db.load_run(stream.run_id)
        [failed] = [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]
        assert "stream" in failed.error.message
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER

    run(serve(server, body))


def test_the_fake_servers_speak_each_vendors_sse(provider: Provider) -> None:
    server = provider.server([Reply(text="abcdef", chunk_size=2)])

    async def body(server: FakeServer) -> None:
        import httpx2 as http

        headers = {"authorization": "Bearer k", "x-api-key": "k", "anthropic-version": "2023-06-01"}
        payload: dict[str, Any] = {
            "model": "m", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True},
        }
        path = "/v1/chat/completions" if provider.name == "openai" else "/v1/messages"
        async with http.AsyncClient() as client:
            reply = await client.post(server.origin + path, json=payload, headers=headers)
        assert reply.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in reply.text.split("\n\n") if b.strip()]
        data = [line[6:] for b in blocks for line in b.splitlines() if line.startswith("data: ")]
        if provider.name == "openai":
            assert data[-1] == "[DONE]"
            chunks = [json.loads(d) for d in data[:-1]]
            assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
            assert "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            ) == "abcdef"
            assert chunks[-1]["choices"] == []
            assert chunks[-1]["usage"]["total_tokens"] > 0
        else:
            names = [b.splitlines()[0].removeprefix("event: ") for b in blocks]
            assert names[0] == "message_start"
            assert names[-2:] == ["message_delta", "message_stop"]
            assert names.count("content_block_delta") == 3

    run(serve(server, body))


def test_a_stalled_stream_times_out_and_is_retried(provider: Provider, store: StoreFactory) -> None:
    server = provider.server([Fault.stall_stream(1, seconds=30), Reply(text=ANSWER)])

    async def body(server: FakeServer) -> None:
        agent = Agent(provider.model(server, timeout=0.5), db=store(), retry=FAST)
        stream = agent.stream_async("Weather?")
        events = await _consume(stream)
        stored = await agent.db.load_run(stream.run_id)
        [failed] = [e for e in stored.events if isinstance(e, ModelAttemptFailedEvent)]
        assert "ModelTimeoutError" in failed.error.type
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER

    run(serve(server, body))


def test_leaving_a_stream_mid_answer_records_the_interruption(
    provider: Provider, store: StoreFactory
) -> None:
    server = provider.server([Fault.stall_stream(1, seconds=30), Reply(text=ANSWER)])

    async def body(server: FakeServer) -> None:
        agent = Agent(provider.model(server), db=store(), retry=FAST)
        async with agent.stream_async("Weather?") as stream:
            async for event in stream:
                if isinstance(event, TextDelta):
                    break
        stored = await agent.db.load_run(stream.run_id)
        assert stored.header.state is RunState.ERROR
        assert isinstance(stored.events[-1], FailedEvent)
        assert stored.header.lease is None
        events = await _consume(agent.continue_stream_async(stream.run_id))
        assert isinstance(events[-1], Finished)
        assert events[-1].output.output == ANSWER

    run(serve(server, body))


def test_a_stream_left_early_leaves_no_generator_of_the_adapter_open(provider: Provider) -> None:
    """Every async generator the adapter iterates itself is closed when its stream is closed.

    The SDKs' own generators under the stream are theirs to close (at ``[DONE]``
    openai leaves four to the garbage collector); the adapter closes the HTTP
    response, and must not add an open generator of its own on top.
    """
    server = provider.server([Reply(text=ANSWER, chunk_size=4)])
    adapters = {
        str(Path(module.__file__ or ""))
        for module in (_openai_stream, _anthropic_stream)
    }

    async def body(server: FakeServer) -> None:
        model = provider.model(server)
        firstiter, finalizer = sys.get_asyncgen_hooks()
        iterated: list[Any] = []

        def first(agen: Any) -> None:
            # Called inside the first ``__anext__``: the frame above is its caller's.
            if sys._getframe(1).f_code.co_filename in adapters:
                iterated.append(agen)
            if firstiter is not None:
                firstiter(agen)

        sys.set_asyncgen_hooks(firstiter=first, finalizer=finalizer)
        try:
            stream = model.stream([UserMessage(content="Weather?")], tools=[])
            async for item in stream:
                assert isinstance(item, ModelDelta)
                break
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
        left = [agen.__qualname__ for agen in iterated if agen.ag_frame is not None]
        assert not left, f"the adapter left {left} open"

    run(serve(server, body))
