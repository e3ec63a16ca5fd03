"""Segments a `Worker` drives: its id, queue and claim on the span; takeovers, stops, retries."""

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
from opentelemetry.sdk.trace import ReadableSpan

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunRetry,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    Worker,
    tool,
)
from durable_agent.backend import LeaseOwner
from durable_agent.backends.memory import MemoryBackend
from tests._barriers import wait_for_path, wait_until_async
from tests.telemetry.child import PROMPT, make_agent
from tests.telemetry.conftest import Recorded, load_spans
from tests.telemetry.flaky import FlakyBackend, echo
from tests.telemetry.test_traces import MARKS
from tests.telemetry.worker_child import LIVENESS_TTL

CHILD = Path(__file__).with_name("worker_child.py")


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def _events(span: ReadableSpan, name: str) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def _running(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run(handle_signals=False))


def _holding(name: str) -> tuple[Agent, MemoryBackend, asyncio.Event, asyncio.Event]:
    """An agent whose one tool call waits inside the tool: `started` once in, `release` to end."""
    started, release = asyncio.Event(), asyncio.Event()

    @tool
    async def hold() -> str:
        """Wait until the test lets go."""
        started.set()
        await release.wait()
        return "held"

    db = MemoryBackend()
    agent = Agent(ScriptedModel([ToolCall("hold", {}), "done"]), db=db, tools=[hold], name=name)
    return agent, db, started, release


def test_a_worker_driven_segment_names_the_worker_queue_and_claim(recorded: Recorded) -> None:
    async def main() -> Worker:
        db = MemoryBackend()
        agent = Agent(ScriptedModel(["done"]), db=db, name="adder")
        handle = await agent.submit_async("add", queue="math")
        worker = Worker([agent], concurrency=1)
        task = await _running(worker)
        assert (await handle.result(timeout=60)).state is RunState.DONE
        worker.stop()
        await asyncio.wait_for(task, 60)
        return worker

    worker = asyncio.run(main())
    (segment,) = recorded.spans("invoke_agent adder")
    attrs = _attrs(segment)
    assert attrs["durable_agent.worker.id"] == worker.id
    assert attrs["durable_agent.queue"] == "math"
    assert attrs["durable_agent.claim.kind"] == "pending"
    assert attrs["durable_agent.run.state"] == "DONE"
    assert not _events(segment, "durable_agent.takeover")
    assert not _events(segment, "durable_agent.worker.release")
    (chat,) = recorded.spans("chat scripted")
    assert chat.parent is not None
    assert chat.parent.span_id == segment.context.span_id
    who = {"durable_agent.worker.id": worker.id}
    assert recorded.total("durable_agent.worker.claims", **who, **{
        "durable_agent.claim.kind": "pending", "durable_agent.queue": "math",
    }) == 1
    assert recorded.total("durable_agent.worker.releases", **who, **{
        "durable_agent.release.kind": "rest",
    }) == 1


def test_a_run_an_agent_runs_inside_a_workers_tool_is_not_the_workers_claim(
    recorded: Recorded,
) -> None:
    async def main() -> None:
        db = MemoryBackend()
        inner = Agent(ScriptedModel(["inner answer"]), db=db, name="inner")

        @tool
        async def ask() -> str:
            """Ask the inner agent."""
            return await inner.do_async("inner question")

        outer = Agent(ScriptedModel([ToolCall("ask", {}), "outer answer"]), db=db,
                      tools=[ask], name="outer")
        handle = await outer.submit_async("go")
        worker = Worker([outer], concurrency=1)
        task = await _running(worker)
        assert (await handle.result(timeout=60)).output == "outer answer"
        worker.stop()
        await asyncio.wait_for(task, 60)

    asyncio.run(main())
    (outer,) = recorded.spans("invoke_agent outer")
    (inner,) = recorded.spans("invoke_agent inner")
    assert _attrs(outer)["durable_agent.claim.kind"] == "pending"
    assert "durable_agent.worker.id" not in _attrs(inner)
    assert "durable_agent.claim.kind" not in _attrs(inner)


def test_a_stopping_worker_hands_its_run_back_and_the_next_claim_is_no_takeover(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> tuple[Worker, Worker]:
        agent, db, started, release = _holding("holder")
        handle = await agent.submit_async("hold")
        first = Worker([agent], concurrency=1)
        running = await _running(first)
        await asyncio.wait_for(started.wait(), 60)
        first.stop()  # what SIGTERM does: the run is released at its next model call
        release.set()
        await asyncio.wait_for(running, 60)
        assert (await db.get_run(handle.run_id)).state is RunState.MODEL_CALL
        second = Worker([agent], concurrency=1)
        running = await _running(second)
        assert (await handle.result(timeout=60)).output == "done"
        second.stop()
        await asyncio.wait_for(running, 60)
        return first, second

    with caplog.at_level(logging.INFO, logger="durable_agent"):
        first, second = asyncio.run(main())
    stopped, finished = sorted(recorded.spans("invoke_agent holder"), key=lambda s: s.start_time)
    assert _attrs(stopped)["durable_agent.worker.id"] == first.id
    assert _attrs(stopped)["durable_agent.run.state"] == "MODEL_CALL"
    (release,) = _events(stopped, "durable_agent.worker.release")
    assert release["durable_agent.release.kind"] == "stop"
    assert release["durable_agent.run.state"] == "MODEL_CALL"
    # Handed back unheld: the next claim is a plain one, linked to the stopped segment.
    assert _attrs(finished)["durable_agent.worker.id"] == second.id
    assert _attrs(finished)["durable_agent.claim.kind"] == "pending"
    assert not _events(finished, "durable_agent.takeover")
    (link,) = finished.links
    assert link.context.span_id == stopped.context.span_id
    assert recorded.total("durable_agent.takeovers") == 0
    assert recorded.total("durable_agent.worker.releases", **{
        "durable_agent.worker.id": first.id, "durable_agent.release.kind": "stop",
    }) == 1
    # The hand-back is the worker's to log; the engine does not call the run stranded.
    assert not [r for r in caplog.records if "stranded" in r.getMessage()]
    assert [r for r in caplog.records if "for another worker (stopping)" in r.getMessage()]


def test_a_run_cut_when_the_grace_passes_is_released_as_cut(recorded: Recorded) -> None:
    async def main() -> Worker:
        started = asyncio.Event()

        @tool
        async def forever() -> str:
            """Never return (until cut)."""
            started.set()
            await asyncio.Event().wait()
            return "never"

        db = MemoryBackend()
        agent = Agent(ScriptedModel([ToolCall("forever", {}), "done"]), db=db,
                      tools=[forever], name="stuck")
        handle = await agent.submit_async("hold")
        worker = Worker([agent], concurrency=1, grace=0.01)
        running = await _running(worker)
        await asyncio.wait_for(started.wait(), 60)
        worker.stop()
        await asyncio.wait_for(running, 60)
        # Cut, recorded, and handed back: in the state that was cut, unheld.
        header = await db.get_run(handle.run_id)
        assert (header.state, header.lease) == (RunState.TOOL_EXEC, None)
        return worker

    worker = asyncio.run(main())
    (segment,) = recorded.spans("invoke_agent stuck")
    (release,) = _events(segment, "durable_agent.worker.release")
    assert release["durable_agent.release.kind"] == "cut"
    assert _attrs(segment)["error.type"] == "asyncio.exceptions.CancelledError"
    assert recorded.total("durable_agent.worker.releases", **{
        "durable_agent.worker.id": worker.id, "durable_agent.release.kind": "cut",
    }) == 1


def test_a_run_level_retry_is_a_retry_claim_with_its_number(recorded: Recorded) -> None:
    async def main() -> None:
        db = MemoryBackend()
        outage = ScriptedFailure(turn=0, error=ModelHTTPError(503, "provider outage"), times=2)
        agent = Agent(ScriptedModel(["ok"], failures=[outage]), db=db, retry=1, name="flaky")
        handle = await agent.submit_async("try")
        worker = Worker([agent], retry=RunRetry(attempts=3, backoff=0.01))
        running = await _running(worker)

        async def done() -> bool:
            return (await db.get_run(handle.run_id)).state is RunState.DONE

        await wait_until_async(done, awaiting="the run DONE after two run-level retries")
        worker.stop()
        await asyncio.wait_for(running, 60)

    asyncio.run(main())
    segments = sorted(recorded.spans("invoke_agent flaky"), key=lambda s: s.start_time)
    kinds = [_attrs(s)["durable_agent.claim.kind"] for s in segments]
    assert kinds == ["pending", "retry", "retry"]
    numbers = [e["durable_agent.run_retry.number"] for s in segments[1:]
               for e in _events(s, "durable_agent.run_retry")]
    assert numbers == [1, 2]
    assert all(
        e["durable_agent.run_retry.attempts"] == 3 and
        e["durable_agent.run.failed_state"] == "MODEL_CALL"
        for s in segments[1:] for e in _events(s, "durable_agent.run_retry")
    )
    assert [len(_events(s, "durable_agent.recovery")) for s in segments] == [0, 1, 1]
    retries = {"durable_agent.claim.kind": "retry"}
    assert recorded.total("durable_agent.worker.claims", **retries) == 2
    rests = {"durable_agent.release.kind": "rest"}
    assert recorded.total("durable_agent.worker.releases", **rests) == 3


def test_a_sigkilled_workers_run_taken_over_by_another_worker_links_and_says_so(
    tmp_path: Path, recorded: Recorded
) -> None:
    db, spans, ready = tmp_path / "runs.db", tmp_path / "spans.jsonl", tmp_path / "ready"
    url = f"sqlite:///{db}"
    run_id = f"taken-{uuid.uuid4().hex[:8]}"
    agent = make_agent(url, hold=None)
    asyncio.run(agent.submit_async(Task(PROMPT, run_id=run_id), queue="weather"))
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, str(spans), str(ready)],
        env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_path(ready, awaiting="the child worker inside the run's second tool call",
                      processes=[child])
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    killed_id = ready.with_suffix(".id").read_text()
    child_text = spans.read_text()
    child_spans = load_spans(child_text)
    (first_segment,) = {s["parent_id"] for s in child_spans}  # its own span never ended

    async def take_over() -> Worker:
        # The killed worker's registration lapses after its liveness TTL; then this
        # worker's claim takes the run over (its lease has not expired yet).
        worker = Worker([make_agent(url, hold=None)], concurrency=1, liveness_ttl=LIVENESS_TTL)
        running = await _running(worker)
        output = await agent.wait_run_async(run_id, timeout=60)
        assert output.output == "ANSWERMARK: sunny everywhere"
        worker.stop()
        await asyncio.wait_for(running, 60)
        return worker

    worker = asyncio.run(take_over())
    (segment,) = recorded.spans("invoke_agent weather")
    attrs = _attrs(segment)
    assert attrs["durable_agent.worker.id"] == worker.id != killed_id
    assert attrs["durable_agent.queue"] == "weather"
    assert attrs["durable_agent.claim.kind"] == "takeover"
    assert attrs["durable_agent.run.state.start"] == "TOOL_EXEC"
    (takeover,) = _events(segment, "durable_agent.takeover")
    assert takeover["durable_agent.claim.kind"] == "takeover"
    assert takeover["durable_agent.lease.previous_owner"] == killed_id
    assert takeover["durable_agent.lease.previous_generation"] == 1
    (link,) = segment.links
    assert f"0x{link.context.span_id:016x}" == first_segment
    assert (link.attributes or {})["durable_agent.run.id"] == run_id
    assert recorded.total("durable_agent.worker.claims", **{
        "durable_agent.worker.id": worker.id, "durable_agent.claim.kind": "takeover",
    }) == 1
    assert recorded.total("durable_agent.takeovers") == 1
    assert recorded.total("durable_agent.worker.releases", **{
        "durable_agent.release.kind": "rest",
    }) == 1
    for text in (child_text, recorded.text()):
        for mark in MARKS:
            assert mark not in text


def test_a_run_lost_with_the_store_connection_is_counted_unreachable_not_failed(
    recorded: Recorded,
) -> None:
    async def main() -> Worker:
        db = FlakyBackend(fail_append=2)  # fails like a cut connection, and every release
        agent = Agent(ScriptedModel([ToolCall("echo", {"text": "hi"}), "done"]), db=db,
                      tools=[echo], name="cut", lease_ttl=0.5)
        handle = await agent.submit_async("go")
        worker = Worker([agent], concurrency=1)
        running = await _running(worker)
        assert (await handle.result(timeout=60)).output == "done"  # once the lease lapsed
        worker.stop()
        await asyncio.wait_for(running, 60)
        return worker

    worker = asyncio.run(main())
    lost, finished = sorted(recorded.spans("invoke_agent cut"), key=lambda s: s.start_time or 0)
    assert str(_attrs(lost)["error.type"]).endswith("StoreUnavailableError")
    assert _attrs(finished)["durable_agent.claim.kind"] == "takeover"
    who = {"durable_agent.worker.id": worker.id}
    assert recorded.total("durable_agent.worker.releases", **who, **{
        "durable_agent.release.kind": "unreachable",
    }) == 1
    assert recorded.total("durable_agent.worker.releases", **who, **{
        "durable_agent.release.kind": "rest",
    }) == 1


def test_a_run_taken_by_another_owner_mid_effect_is_counted_lost(recorded: Recorded) -> None:
    async def main() -> Worker:
        agent, db, started, release = _holding("taken")
        handle = await agent.submit_async("hold")
        worker = Worker([agent], concurrency=1)
        running = await _running(worker)
        await asyncio.wait_for(started.wait(), 60)
        held = (await db.get_run(handle.run_id)).lease
        assert held is not None
        other = LeaseOwner(host="elsewhere", pid=1)
        await db.acquire_lease(handle.run_id, other, ttl=30, takeover=held.generation)
        release.set()  # the call ends; recording its result is refused by the fence
        await wait_until_async(
            lambda: not worker.slots_busy,
            awaiting="the worker to stop driving the taken run",
        )
        worker.stop()
        await asyncio.wait_for(running, 60)
        return worker

    worker = asyncio.run(main())
    assert recorded.total("durable_agent.worker.releases", **{
        "durable_agent.worker.id": worker.id, "durable_agent.release.kind": "lost",
    }) == 1
