"""The page hands a resumed run to the fleet; its own agent runs it only if no worker claims it.

In one process over the memory store: a `Worker` and the inspector's
`Fleet` are given agents of the same name whose models answer differently,
so the stored answer says who continued the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from durable_agent import (
    Agent,
    ModelHTTPError,
    RunFailedError,
    ScriptedFailure,
    ScriptedModel,
    Task,
    Worker,
)
from durable_agent.backend import LeaseOwner
from durable_agent.backends.memory import MemoryBackend
from durable_agent.fsm import RunState
from durable_agent.records import TransitionEvent
from durable_agent.ui._fleet import Fleet, NotResumableError

DEADLINE = 60.0


def agent(db: MemoryBackend, answer: str, *, name: str = "calc", fail: bool = False) -> Agent:
    failures = [ScriptedFailure(turn=0, error=ModelHTTPError(400, "bad request"))] if fail else []
    return Agent(ScriptedModel([answer], failures=failures), db=db, name=name, retry=1)


async def failed_run(db: MemoryBackend) -> str:
    with contextlib.suppress(RunFailedError):
        await agent(db, "never", fail=True).do_async(Task("What is 7 + 7?", run_id="r1"))
    assert (await db.get_run("r1")).state is RunState.ERROR
    return "r1"


@contextlib.asynccontextmanager
async def worker_for(worker_agent: Agent) -> AsyncIterator[Worker]:
    worker = Worker([worker_agent], concurrency=1)
    running = asyncio.create_task(worker.run(handle_signals=False))
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(running, DEADLINE)


async def answer_of(fleet_agent: Agent, run_id: str) -> str | None:
    out = await fleet_agent.wait_run_async(run_id, timeout=DEADLINE)
    return out.output


def test_a_resumed_run_goes_to_a_worker_and_the_page_agent_does_not_run_it() -> None:
    asyncio.run(_a_resumed_run_goes_to_a_worker_and_the_page_agent_does_not_run_it())


async def _a_resumed_run_goes_to_a_worker_and_the_page_agent_does_not_run_it() -> None:
    db = MemoryBackend()
    run_id = await failed_run(db)
    page_agent = agent(db, "from the page")
    fleet = Fleet(agent=page_agent, fleet_wait=DEADLINE, requested_by="ops-ana")
    async with worker_for(agent(db, "from a worker")):
        message = await fleet.resume(db, run_id)
        assert "handed to the fleet: a worker serving agent 'calc'" in message
        assert await answer_of(page_agent, run_id) == "from a worker"
    await fleet.close()
    resumed = [e for e in (await db.load_run(run_id)).events if e.trigger == "resume"]
    assert [(type(e), e.requested_by) for e in resumed] == [(TransitionEvent, "ops-ana")]


def test_when_no_worker_claims_it_the_page_agent_continues_the_run() -> None:
    asyncio.run(_when_no_worker_claims_it_the_page_agent_continues_the_run())


async def _when_no_worker_claims_it_the_page_agent_continues_the_run() -> None:
    db = MemoryBackend()
    run_id = await failed_run(db)
    page_agent = agent(db, "from the page")
    fleet = Fleet(agent=page_agent, fleet_wait=0.2, requested_by="ops-ana")
    message = await fleet.resume(db, run_id)
    assert "within 0.2 s, the agent 'calc' continues it" in message
    assert await answer_of(page_agent, run_id) == "from the page"
    await fleet.close()


def test_a_run_of_another_agent_is_only_handed_over() -> None:
    asyncio.run(_a_run_of_another_agent_is_only_handed_over())


async def _a_run_of_another_agent_is_only_handed_over() -> None:
    db = MemoryBackend()
    run_id = await failed_run(db)
    fleet = Fleet(agent=agent(db, "x", name="billing"), fleet_wait=0.0, requested_by="ops")
    message = await fleet.resume(db, run_id)
    assert "(this inspector's agent is 'billing')" in message
    header = await db.get_run(run_id)
    assert (header.state, header.lease) == (RunState.MODEL_CALL, None)  # claimable, untouched
    await fleet.close()


def test_a_finished_run_or_one_a_live_process_holds_is_not_resumed() -> None:
    asyncio.run(_a_finished_run_or_one_a_live_process_holds_is_not_resumed())


async def _a_finished_run_or_one_a_live_process_holds_is_not_resumed() -> None:
    db = MemoryBackend()
    page_agent = agent(db, "14")
    await page_agent.do_async(Task("What is 7 + 7?", run_id="done"))
    fleet = Fleet(agent=page_agent, fleet_wait=0.0, requested_by="ops")
    with pytest.raises(NotResumableError, match="is DONE: nothing to resume"):
        await fleet.resume(db, "done")
    run_id = await failed_run(db)
    held = await db.acquire_lease(run_id, LeaseOwner.current(), ttl=60)
    before = await db.load_run(run_id)
    with pytest.raises(NotResumableError, match="another process resumed or holds it"):
        await fleet.resume(db, run_id)
    assert (await db.load_run(run_id)).events == before.events
    await db.release_lease(run_id, held)
