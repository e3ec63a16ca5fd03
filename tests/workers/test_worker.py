"""Workers and submitted runs in one process: what is claimed, retried, refused, waited for."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from durable_agent import (
    Agent,
    ConfigurationError,
    ModelHTTPError,
    RunRetry,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    Task,
    ToolCall,
    WaitTimeoutError,
    Worker,
    tool,
)
from durable_agent import worker as worker_module
from durable_agent._worker_retry import due_retry
from durable_agent.backend import Backend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.errors import StoreUnavailableError
from durable_agent.records import FailedEvent, TransitionEvent
from tests._barriers import wait_until_async
from tests.telemetry.flaky import FlakyBackend


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _adder(db: MemoryBackend, **options: object) -> Agent:
    script = [ToolCall("add", {"a": 2, "b": 3}), "5"]
    return Agent(ScriptedModel(script), db=db, tools=[add], name="adder", **options)  # type: ignore[arg-type]


async def _running(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run(handle_signals=False))


async def _stopped(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 60)


def test_submit_returns_a_pending_run_at_once_and_result_waits_for_the_worker() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        handle = await agent.submit_async("add 2 and 3", queue="math", priority=3)
        header = await db.get_run(handle.run_id)
        assert header.state is RunState.PENDING
        assert header.lease is None
        assert (header.queue, header.priority, header.agent_name) == ("math", 3, "adder")
        worker = Worker([agent], concurrency=1)
        task = await _running(worker)
        output = await handle.result(timeout=60)
        assert output.state is RunState.DONE
        assert output.output == "5"
        again = await agent.wait_run_async(handle.run_id, timeout=0)  # at rest: at once
        assert again.output == "5"
        await _stopped(worker, task)

    asyncio.run(main())


def test_a_worker_leaves_runs_of_agents_and_queues_it_does_not_serve() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        stranger = Agent(ScriptedModel(["no"]), db=db, name="stranger")
        mine = [await agent.submit_async("add") for _ in range(3)]
        theirs = await stranger.submit_async("other agent")
        elsewhere = await agent.submit_async("other queue", queue="elsewhere")
        worker = Worker([agent], queues=["default"])
        task = await _running(worker)
        for handle in mine:
            assert (await handle.result(timeout=60)).state is RunState.DONE
        await _stopped(worker, task)
        for handle in (theirs, elsewhere):
            header = await db.get_run(handle.run_id)
            assert header.state is RunState.PENDING
            assert header.lease is None
            assert header.lease_generation == 0
        assert worker.claimed == 3

    asyncio.run(main())


def test_a_run_not_before_later_is_claimed_only_then() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        later = await agent.submit_async("later", not_before=datetime.now(UTC) + timedelta(hours=1))
        now = await agent.submit_async("now")
        worker = Worker([agent])
        task = await _running(worker)
        assert (await now.result(timeout=60)).state is RunState.DONE
        await _stopped(worker, task)
        assert (await db.get_run(later.run_id)).state is RunState.PENDING

    asyncio.run(main())


def test_waiting_times_out_with_a_helpful_error_and_changes_nothing() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        handle = await agent.submit_async("nobody serves me")
        with pytest.raises(WaitTimeoutError, match="still PENDING") as caught:
            await handle.result(timeout=0.05)
        assert isinstance(caught.value, TimeoutError)
        assert (await db.get_run(handle.run_id)).state is RunState.PENDING

    asyncio.run(main())


def test_the_sync_twins_submit_and_wait() -> None:
    db = MemoryBackend()
    agent = _adder(db)
    handle = agent.submit("sync")
    with pytest.raises(WaitTimeoutError):
        handle.result_sync(timeout=0.01)
    with pytest.raises(WaitTimeoutError):
        agent.wait_run(handle.run_id, timeout=0.01)


def test_submitting_a_task_twice_by_id_stores_one_run() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        task = Task("once", run_id="chosen-id")
        first = await agent.submit_async(task)
        second = await agent.submit_async(Task("once", run_id="chosen-id"))
        assert first.run_id == second.run_id == "chosen-id"
        assert len((await db.list_runs()).runs) == 1

    asyncio.run(main())


def test_bad_submit_and_worker_arguments_are_refused() -> None:
    db = MemoryBackend()
    agent = _adder(db)
    with pytest.raises(ConfigurationError, match="own tools"):
        agent.submit(Task("x", tools=[add]))
    with pytest.raises(ConfigurationError, match="queue"):
        agent.submit("x", queue="")
    with pytest.raises(ConfigurationError, match="priority"):
        agent.submit("x", priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="aware"):
        agent.submit("x", not_before=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="at least one"):
        Worker([])
    with pytest.raises(ConfigurationError, match="two agents named"):
        Worker([agent, _adder(db)])
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker([agent], concurrency=0)
    with pytest.raises(ConfigurationError, match="different stores"):
        Worker([agent, Agent(ScriptedModel(["x"]), db=MemoryBackend(), name="b")])
    with pytest.raises(ConfigurationError, match="attempts"):
        RunRetry(attempts=0)


class Answer(BaseModel):
    value: int


def test_a_structured_answer_is_parsed_by_the_handle() -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = Agent(ScriptedModel(['{"value": 4}']), db=db, name="structured")
        handle = await agent.submit_async(Task("four", response_format=Answer))
        worker = Worker([agent])
        task = await _running(worker)
        output = await handle.result(timeout=60)
        await _stopped(worker, task)
        assert output.parsed == Answer(value=4)

    asyncio.run(main())


def _outage(times: int) -> ScriptedModel:
    error = ModelHTTPError(503, "provider outage")
    return ScriptedModel(["ok"], failures=[ScriptedFailure(turn=0, error=error, times=times)])


def test_the_retry_policy_resumes_a_run_failed_by_an_outage_and_records_each_attempt(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        agent = Agent(_outage(times=2), db=db, retry=1, name="flaky")
        handle = await agent.submit_async("try")
        worker = Worker([agent], retry=RunRetry(attempts=3, backoff=0.01))
        task = await _running(worker)

        async def done() -> bool:
            return (await db.get_run(handle.run_id)).state is RunState.DONE

        await wait_until_async(done, awaiting="the run DONE after two retries")
        await _stopped(worker, task)
        events = (await db.load_run(handle.run_id)).events
        assert sum(isinstance(e, FailedEvent) for e in events) == 2
        resumes = [e for e in events if isinstance(e, TransitionEvent) and e.trigger == "resume"]
        assert len(resumes) == 2
        await db.close()

    asyncio.run(main())


def test_without_a_retry_policy_and_past_its_attempts_a_failed_run_stays_failed(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        agent = Agent(_outage(times=10), db=db, retry=1, name="down")
        handle = await agent.submit_async("try")
        worker = Worker([agent])  # no policy: default off
        task = await _running(worker)
        output = await handle.result(timeout=60)
        await _stopped(worker, task)
        assert output.state is RunState.ERROR
        stored = await db.load_run(handle.run_id)
        policy = RunRetry(attempts=2, backoff=0)
        assert due_retry(stored, policy) is not None  # a first retry would be due
        used_up = stored.model_copy(
            update={"events": (*stored.events, *[stored.events[-1]] * 2)}
        )
        assert due_retry(used_up, policy) is None  # three failures: two retries used
        await db.close()

    asyncio.run(main())


def test_a_worker_logs_each_claim_and_release(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        db = MemoryBackend()
        agent = _adder(db)
        handle = await agent.submit_async("log me")
        worker = Worker([agent])
        task = await _running(worker)
        await handle.result(timeout=60)
        await _stopped(worker, task)

    with caplog.at_level(logging.INFO, logger="durable_agent.worker"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "durable_agent.worker"]
    assert sum("claimed run" in m for m in messages) == 1
    assert sum("rests in DONE" in m for m in messages) == 1


def test_a_worker_that_loses_the_store_mid_run_says_so_and_the_run_continues_after_its_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write lost with the connection is no failure of the run, nor a takeover.

    `FlakyBackend` fails the second append the way a cut connection does
    (`StoreUnavailableError`) and every release, so the lease stays until it
    lapses; then the fleet (here the same worker) claims the run again.
    """

    async def main() -> str:
        db = FlakyBackend(fail_append=2)
        agent = _adder(db, lease_ttl=0.5)
        handle = await agent.submit_async("add 2 and 3")
        worker = Worker([agent], concurrency=1)
        task = await _running(worker)
        output = await handle.result(timeout=60)
        await _stopped(worker, task)
        assert output.state is RunState.DONE
        return handle.run_id

    with caplog.at_level(logging.INFO, logger="durable_agent.worker"):
        run_id = asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "durable_agent.worker"]
    (lost,) = [m for m in messages if "lost the connection to the store" in m]
    assert lost.startswith(f"run {run_id}: ")
    assert "the store went away" in lost
    assert "its lease lapses within 0.5 s and another worker continues it" in lost
    assert not any("driving it failed" in m or "another owner holds it" in m for m in messages)
    assert sum("took over run" in m for m in messages) == 1  # once the lease lapsed


class _CutWakeUps(MemoryBackend):
    """A store whose wake-up wait, once cancelled, ends in an error instead (a driver that
    closes the connection under a cancelled blocking read does so)."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_waits = 0

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        if after is None:
            return await super().wait_for_change(None, timeout=timeout)
        try:
            return await super().wait_for_change(after, timeout=timeout)
        except asyncio.CancelledError:
            self.cut_waits += 1
            raise StoreUnavailableError("the connection closed under the wait") from None


def test_a_cancelled_wake_up_wait_that_ends_in_an_error_leaves_no_unread_task_error() -> None:
    """The idle worker gives up on the wait; asyncio must not log how it ended."""
    unhandled: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
        db = _CutWakeUps()
        worker = Worker([_adder(db)])
        task = await _running(worker)
        # An idle wait with nothing to wake it ends by its timeout and is cancelled.
        await wait_until_async(lambda: db.cut_waits >= 2, awaiting="two cut waits")
        await _stopped(worker, task)
        gc.collect()  # an unread task error is reported when the task is collected

    asyncio.run(main())
    assert [ctx.get("message") for ctx in unhandled] == []


class _LostWakeUps(MemoryBackend):
    """A store whose wake-up waits fail at once, the way they do while the store is down."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_waits = 0

    async def wait_for_change(self, after: str | None = None, *, timeout: float) -> str:
        self.failed_waits += 1
        raise StoreUnavailableError("the store went away")


def test_an_idle_worker_whose_wake_ups_fail_pauses_as_when_polling_instead_of_spinning() -> None:
    async def main() -> None:
        db = _LostWakeUps()
        worker = Worker([_adder(db)])
        task = await _running(worker)
        await wait_until_async(lambda: db.failed_waits >= 3, awaiting="three failed waits")
        await _stopped(worker, task)
        # Each failed wait was followed by a pause, growing as a polling worker's does.
        assert worker._pause > worker_module._FIRST_PAUSE

    asyncio.run(main())
