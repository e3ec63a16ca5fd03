"""A worker's gauges: its slots, the slots busy, and the claimable backlog it sees."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from durable_agent import Agent, ScriptedModel, ToolCall, Worker, tool
from durable_agent.backends.memory import MemoryBackend
from tests._barriers import wait_until_async
from tests.telemetry.conftest import Recorded

WORKER_ID = "durable_agent.worker.id"


def test_gauges_report_slots_busy_and_only_the_backlog_the_worker_could_claim(
    recorded: Recorded,
) -> None:
    async def main() -> None:
        release = asyncio.Event()
        started = asyncio.Event()

        @tool
        async def hold() -> str:
            """Wait until the test lets go."""
            started.set()
            await release.wait()
            return "held"

        db = MemoryBackend()
        agent = Agent(
            ScriptedModel([ToolCall("hold", {}), "done"]), db=db, tools=[hold], name="holder"
        )
        stranger = Agent(ScriptedModel(["no"]), db=db, name="stranger")
        for n in range(3):
            await agent.submit_async(f"hold {n}")
        await agent.submit_async("another queue", queue="slow")
        await agent.submit_async("later", not_before=datetime.now(UTC) + timedelta(hours=1))
        await stranger.submit_async("not this worker's agent")

        worker = Worker([agent], db=db, concurrency=1, queues=["default"], liveness_ttl=0.5)
        worker_id = worker.id
        running = asyncio.create_task(worker.run(handle_signals=False))
        await asyncio.wait_for(started.wait(), 30)

        def gauge(name: str) -> float | None:
            found = [
                v for a, v in recorded.points(name) if a.get(WORKER_ID) == worker_id
            ]
            return found[-1] if found else None

        # Recounted every few liveness ticks: one held, two left that this worker may claim.
        await wait_until_async(
            lambda: gauge("durable_agent.worker.backlog") == 2,
            awaiting="a backlog of 2",
            timeout=30,
        )
        assert gauge("durable_agent.worker.slots") == 1
        assert gauge("durable_agent.worker.slots.busy") == 1

        release.set()
        await wait_until_async(
            lambda: gauge("durable_agent.worker.backlog") == 0, awaiting="no backlog", timeout=60
        )
        await wait_until_async(
            lambda: gauge("durable_agent.worker.slots.busy") == 0,
            awaiting="no slot busy",
            timeout=30,
        )
        worker.stop()
        await asyncio.wait_for(running, 60)

    asyncio.run(main())


def test_two_workers_in_one_process_each_report_their_own_points(recorded: Recorded) -> None:
    db = MemoryBackend()
    first = Worker([Agent(ScriptedModel(["a"]), db=db, name="a")], db=db, concurrency=2)
    second = Worker([Agent(ScriptedModel(["b"]), db=db, name="b")], db=db, concurrency=5)
    slots = {a[WORKER_ID]: v for a, v in recorded.points("durable_agent.worker.slots")}
    assert slots == {first.id: 2, second.id: 5}
    del second
    import gc

    gc.collect()
    remaining = {a[WORKER_ID] for a, _ in recorded.points("durable_agent.worker.slots")}
    assert remaining == {first.id}


def test_without_telemetry_a_worker_registers_no_gauges() -> None:
    db = MemoryBackend()
    worker = Worker([Agent(ScriptedModel(["a"]), db=db, name="a")], db=db)
    assert worker._metrics.enabled is False
