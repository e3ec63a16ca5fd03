"""Traces and metrics of a run that is SIGKILLed in its second tool call and resumed elsewhere."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from durable_agent import Agent, RetryPolicy, Task, ToolCall, mark_secret
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.models.openai import OpenAIModel
from durable_agent.run import RunContext
from durable_agent.testing.fake_servers import FakeOpenAIServer, Fault
from tests._barriers import wait_for_path
from tests.telemetry.child import PROMPT, make_agent
from tests.telemetry.conftest import Recorded, load_spans

CHILD = Path(__file__).with_name("child.py")
MARKS = ("PROMPTMARK", "SYSTEMMARK", "ARGMARK", "RESULTMARK", "ANSWERMARK")


def _crash_in_second_tool(tmp_path: Path, run_id: str) -> tuple[str, list[dict[str, object]]]:
    """Start the run in a child, SIGKILL it inside the second tool call; return its spans."""
    db, spans, ready = tmp_path / "runs.db", tmp_path / "spans.jsonl", tmp_path / "ready"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), f"sqlite:///{db}", str(spans), str(ready), run_id],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_path(ready, awaiting="the child inside its second tool call", processes=[child])
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    text = spans.read_text() if spans.exists() else ""
    return text, load_spans(text)


def _stored(db: Path, run_id: str) -> tuple[RunContext, list[str]]:
    async def read() -> tuple[RunContext, list[str]]:
        backend = SqliteBackend(db)
        try:
            stored = await backend.load_run(run_id)
        finally:
            await backend.close()
        links = [e.traceparent for e in stored.events if e.traceparent is not None]
        return RunContext.from_stored(stored), links

    return asyncio.run(read())


def test_a_crashed_and_resumed_run_gives_two_linked_segments(
    tmp_path: Path, recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = f"traced-{uuid.uuid4().hex[:8]}"
    child_text, child_spans = _crash_in_second_tool(tmp_path, run_id)
    names = sorted(s["name"] for s in child_spans)
    # The killed segment's own span never ended, so it was never exported; what
    # ended before the kill was, and names it as parent.
    assert names == ["chat scripted", "chat scripted", "execute_tool lookup"]
    first_segment = {s["parent_id"] for s in child_spans}
    assert len(first_segment) == 1

    agent = make_agent(f"sqlite:///{tmp_path / 'runs.db'}", hold=None)
    caplog.set_level(logging.INFO, logger="durable_agent")
    assert asyncio.run(agent.continue_run_async(run_id=run_id)) == "ANSWERMARK: sunny everywhere"
    takeover = [r for r in caplog.records if "taking over in TOOL_EXEC" in r.getMessage()]
    assert [r.run_id for r in takeover] == [run_id]  # type: ignore[attr-defined]

    ctx, links = _stored(tmp_path / "runs.db", run_id)
    # Each segment stores its span context with its first write.
    assert len(links) == 2
    _, trace_id, span_id, _ = links[0].split("-")
    assert first_segment == {f"0x{span_id}"}
    assert {s["context"]["trace_id"] for s in child_spans} == {f"0x{trace_id}"}

    (segment,) = recorded.spans("invoke_agent weather")
    attrs = segment.attributes or {}
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.agent.name"] == "weather"
    assert attrs["durable_agent.run.id"] == run_id
    assert attrs["gen_ai.conversation.id"] == run_id
    assert attrs["durable_agent.segment.resumed"] is True
    assert attrs["durable_agent.run.state.start"] == "TOOL_EXEC"
    assert attrs["durable_agent.run.state"] == "DONE"
    assert attrs["durable_agent.run.seq.end"] == ctx.seq > attrs["durable_agent.run.seq.start"]
    (link,) = segment.links
    assert f"{link.context.span_id:016x}" == span_id
    assert f"{link.context.trace_id:032x}" == trace_id
    assert (link.attributes or {})["durable_agent.run.id"] == run_id
    assert links[1].split("-")[2] == f"{segment.context.span_id:016x}"
    events = [e.name for e in segment.events]
    assert "durable_agent.takeover" in events
    appends = [dict(e.attributes or {}) for e in segment.events if e.name == "durable_agent.append"]
    assert [a["durable_agent.seq.last"] for a in appends][-1] == ctx.seq
    assert all(int(a["durable_agent.append.bytes"]) > 0 for a in appends)
    # SQLite's group commit says how many appends shared each commit.
    assert all(int(a["durable_agent.store.batch_size"]) >= 1 for a in appends)
    assert recorded.total("durable_agent.store.commit.batch_size") >= len(appends)

    (tool,) = recorded.spans("execute_tool lookup")
    tool_attrs = tool.attributes or {}
    assert tool_attrs["gen_ai.operation.name"] == "execute_tool"
    assert tool_attrs["gen_ai.tool.name"] == "lookup"
    assert tool_attrs["gen_ai.tool.call.id"] == "call_1_0"
    assert tool_attrs["durable_agent.attempt"] == 2  # run again after the crash
    assert tool.parent is not None
    assert tool.parent.span_id == segment.context.span_id
    (chat,) = recorded.spans("chat scripted")
    chat_attrs = chat.attributes or {}
    assert chat_attrs["gen_ai.operation.name"] == "chat"
    assert chat_attrs["gen_ai.provider.name"] == "durable_agent.scripted"
    assert chat_attrs["gen_ai.request.model"] == "scripted"
    assert chat_attrs["gen_ai.response.finish_reasons"] == ("stop",)

    # Usage on the chat spans of both processes adds up to the stored usage.
    chats = [s["attributes"] for s in child_spans if s["name"].startswith("chat ")]
    chats.append(dict(chat_attrs))
    assert sum(int(a["gen_ai.usage.input_tokens"]) for a in chats) == ctx.usage.input_tokens
    assert sum(int(a["gen_ai.usage.output_tokens"]) for a in chats) == ctx.usage.output_tokens

    assert recorded.total("durable_agent.takeovers", **{"gen_ai.agent.name": "weather"}) == 1
    assert recorded.total("durable_agent.runs.finished", **{"durable_agent.run.state": "DONE"}) == 1
    tools_done = {"durable_agent.trigger": "tools_done"}
    assert recorded.total("durable_agent.transitions", **tools_done) == 1
    assert recorded.total("gen_ai.client.operation.duration") == 1

    # Content capture is off: no prompt, argument, result or answer text anywhere.
    for text in (child_text, recorded.text()):
        for mark in MARKS:
            assert mark not in text


def test_content_capture_records_redacted_messages_and_tool_payloads(
    tmp_path: Path, recorded: Recorded
) -> None:
    secret = f"sk-test-{uuid.uuid4().hex}"
    mark_secret(secret)
    recorded.capture()
    agent = make_agent(f"sqlite:///{tmp_path / 'runs.db'}", hold=None)
    asyncio.run(agent.do_async(Task(f"{PROMPT} my key is {secret}")))
    chats = recorded.spans("chat scripted")
    assert "PROMPTMARK" in str((chats[0].attributes or {})["gen_ai.input.messages"])
    assert "ANSWERMARK" in str((chats[-1].attributes or {})["gen_ai.output.messages"])
    tool = recorded.spans("execute_tool lookup")[0].attributes or {}
    assert "ARGMARK-Oslo" in str(tool["gen_ai.tool.call.arguments"])
    assert "RESULTMARK" in str(tool["gen_ai.tool.call.result"])
    text = recorded.text()
    assert secret not in text
    assert "[redacted]" in text


def test_an_api_key_never_reaches_a_span_even_in_error_text(recorded: Recorded) -> None:
    key = f"sk-live-{uuid.uuid4().hex}"
    recorded.capture()  # error messages are recorded too: the strictest case
    items = [
        Fault.http(500, f"upstream said: bad key {key}"),
        Fault.echo_headers(500),
        ToolCall("lookup", {"city": "Oslo"}),
        "done",
    ]
    with FakeOpenAIServer(items, api_key=key).running_in_thread() as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, api_key=key)

        async def lookup(city: str) -> str:
            return f"sunny in {city}"

        agent = Agent(
            model,
            db="memory://",
            tools=[lookup],
            retry=RetryPolicy(attempts=3, initial_delay=0.001, max_delay=0.01),
        )
        assert asyncio.run(agent.do_async("weather?")) == "done"
    chats = recorded.spans("chat gpt-4o-mini")
    assert [(s.attributes or {}).get("error.type") for s in chats][:2] == [
        "durable_agent.errors.ModelHTTPError",
        "durable_agent.errors.ModelHTTPError",
    ]
    assert chats[0].attributes
    assert chats[0].attributes["gen_ai.provider.name"] == "openai"
    (segment,) = recorded.spans("invoke_agent agent")
    assert [e.name for e in segment.events].count("durable_agent.retry") == 2
    text = recorded.text()
    assert "upstream said" in text  # the error text is there, redacted
    assert key not in text
    assert key[-12:] not in text
