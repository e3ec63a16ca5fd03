"""A process never blocks itself: its own leases, failed releases, concurrent continues.

One lease owner per process: a lease this process left behind (a release that
failed, a write whose caller was cancelled) is taken back by any of its agents.
Two executions of one run in one process are refused instead (the second would
start the same effects again), with a `RunStateError` that names the task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    LeaseOwner,
    RunBusyError,
    RunState,
    RunStateError,
    ScriptedModel,
    StoreUnavailableError,
    Task,
    Tool,
    ToolCall,
)
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.engine import Engine
from tests.backends.redis_server import RedisServer, redis_available, skip_or_fail
from tests.engine.cancelling import CancellingBackend, Plan
from tests.engine.conftest import StoreFactory, run


def tool_script() -> ScriptedModel:
    return ScriptedModel([ToolCall("step", {"name": "one"}), "done"])


# -- one owner per process ------------------------------------------------------------------


def test_every_engine_of_a_process_shares_one_owner_and_a_fork_gets_its_own() -> None:
    first = Engine(backend=_unused(), model=None)
    second = Engine(backend=_unused(), model=None)
    assert first.owner is second.owner is LeaseOwner.process()
    assert LeaseOwner.current() != LeaseOwner.process()  # current() stays a new owner
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its owner and leave at once
        try:
            os.write(write, f"{LeaseOwner.process().id} {first.owner.id}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_owner, child_engine_owner = pipe.read().split()
    os.waitpid(pid, 0)
    assert child_owner == child_engine_owner
    assert child_owner != LeaseOwner.process().id
    assert child_owner.split(":")[-2] == str(pid)


def _unused() -> SqliteBackend:
    return SqliteBackend("unused.db")  # never connected: the constructor does no I/O


def test_a_lease_left_by_this_process_never_makes_continue_raise_run_busy(
    store: StoreFactory,
) -> None:
    backend = store()
    other = Agent(tool_script(), db=backend, tools=[_step])

    async def scenario() -> None:
        # This process's owner, and another owner object with this pid (or a
        # dead process whose pid this one reuses): neither drives the run.
        for left_by in (LeaseOwner.process(), LeaseOwner.current()):
            # An ERROR run whose lease this process still holds, live for a minute.
            created = Task("again")
            with pytest.raises(Exception, match="boom"):
                await Agent(_failing(), db=backend, retry=1).do_async(created)
            assert created.run_id is not None
            await backend.acquire_lease(created.run_id, left_by, ttl=60)
            out = await other.continue_run_async(run_id=created.run_id, return_output=True)
            assert out.state is RunState.DONE

    run(scenario())


def _failing() -> ScriptedModel:
    from durable_agent import ScriptedFailure

    return ScriptedModel(["done"], failures=[ScriptedFailure(0, RuntimeError("boom"), 10)])


async def _step(name: str) -> str:
    """One step."""
    return name


# -- two continues of one run in one process --------------------------------------------------


def test_a_second_continue_in_the_same_process_is_refused_while_the_first_runs(
    store: StoreFactory,
) -> None:
    entered, go = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def step(name: str) -> str:
        """A step that waits for the test."""
        calls.append(name)
        entered.set()
        await go.wait()
        return name

    first = Agent(tool_script(), db=store(), tools=[step])
    second = Agent(tool_script(), db=store(), tools=[step])

    async def scenario() -> None:
        task = Task("go", run_id="shared")
        running = asyncio.create_task(first.do_async(task), name="the first continue")
        await entered.wait()
        before = await store().get_run("shared")
        for attempt in (
            second.continue_run_async(run_id="shared"),
            second.do_async(Task("go", run_id="shared")),  # exists: continued, refused
            first.continue_run_async(run_id="shared"),
        ):
            with pytest.raises(RunStateError, match="the first continue") as refused:
                await attempt
            assert "another task of this process" in str(refused.value)
        after = await store().get_run("shared")
        assert after.lease == before.lease, "the refusal touched nothing"
        go.set()
        assert await running == "done"
        assert calls == ["one"], "the tool ran once"
        assert await second.continue_run_async(run_id="shared") == "done"

    run(scenario())


def test_two_concurrent_do_async_of_one_new_run_id_in_one_process_run_it_once(
    store: StoreFactory,
) -> None:
    entered, go = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def step(name: str) -> str:
        """A step that waits for the test."""
        calls.append(name)
        entered.set()
        await go.wait()
        return name

    agent = Agent(tool_script(), db=store(), tools=[step])

    async def scenario() -> None:
        one = asyncio.ensure_future(agent.do_async(Task("go", run_id="new")))
        two = asyncio.ensure_future(agent.do_async(Task("go", run_id="new")))
        done, _ = await asyncio.wait([one, two], return_when=asyncio.FIRST_EXCEPTION)
        refused = done.pop()
        with pytest.raises(RunStateError, match="another task of this process"):
            refused.result()
        await entered.wait()
        go.set()
        winner = two if refused is one else one
        assert await winner == "done"
        assert calls == ["one"]

    run(scenario())


# -- a release that fails ------------------------------------------------------------------------


def test_a_failed_release_is_noted_retried_and_never_blocks_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inner = SqliteBackend(tmp_path / "runs.db")
    wrapped = CancellingBackend(inner)

    outages = [True]

    async def step(name: str) -> str:
        """The store goes away while the first call runs: the next append and release fail."""
        wrapped.down = bool(outages and outages.pop())
        return name

    agent = Agent(tool_script(), db=wrapped, tools=[step])
    task = Task("go")

    async def scenario() -> None:
        with (
            caplog.at_level(logging.WARNING, logger="durable_agent"),
            pytest.raises(StoreUnavailableError) as failed,
        ):
            await agent.do_async(task)
        assert task.run_id is not None
        notes = "\n".join(getattr(failed.value, "__notes__", ()))
        assert f"run {task.run_id!r}: its lease could not be released" in notes
        assert "takes it back at once" in notes
        assert any(task.run_id in r.getMessage() for r in caplog.records)
        left = await inner.get_run(task.run_id)
        assert left.lease is not None
        assert left.lease.owner == LeaseOwner.process().id
        wrapped.down = False  # the store is back
        # The next operation of this agent on the store settles the release first.
        assert await agent.do_async(Task("other")) == "done"
        assert (await inner.get_run(task.run_id)).lease is None
        assert await agent.continue_run_async(run_id=task.run_id) == "done"

    run(scenario())
    run(inner.close())


def test_after_a_failed_release_any_agent_of_the_process_continues_at_once(
    tmp_path: Path,
) -> None:
    inner = SqliteBackend(tmp_path / "runs.db")
    wrapped = CancellingBackend(inner)

    async def step(name: str) -> str:
        """The store goes away while this runs."""
        wrapped.down = True
        return name

    task = Task("go")

    async def scenario() -> None:
        with pytest.raises(StoreUnavailableError):
            await Agent(tool_script(), db=wrapped, tools=[step]).do_async(task)
        assert task.run_id is not None
        wrapped.down = False
        # Owes nothing: takes it back. The same tool name, so the in-flight call
        # is re-run rather than held in doubt as a removed tool.
        fresh = Agent(tool_script(), db=inner, tools=[Tool(_step, name="step")])
        assert await fresh.continue_run_async(run_id=task.run_id) == "done"

    run(scenario())
    run(inner.close())


@pytest.mark.parametrize("mode", ["hops", "after", "self", "fail"])
def test_a_release_interrupted_by_a_cancellation_or_a_lost_connection_leaves_no_lease(
    tmp_path: Path, mode: str
) -> None:
    inner = SqliteBackend(tmp_path / "runs.db")
    wrapped = CancellingBackend(inner)
    engine = Engine(backend=wrapped, model=None)

    async def scenario() -> None:
        failed = Task("go")
        with pytest.raises(Exception, match="boom"):
            await Agent(_failing(), db=inner, retry=1).do_async(failed)
        assert failed.run_id is not None
        execution = engine.execution(failed.run_id, {})
        await execution.acquire()

        async def release() -> None:
            await execution.release()

        task: asyncio.Task[object] = asyncio.ensure_future(release())
        wrapped.arm(Plan(1, mode), task)  # type: ignore[arg-type]
        with pytest.raises((asyncio.CancelledError, StoreUnavailableError)):
            await task
        # A release cut off by the cancellation finishes on its own: wait for
        # the store to show it, with a deadline.
        deadline = time.monotonic() + 60  # a bound on failure only: generous on a busy machine
        while (await inner.get_run(failed.run_id)).lease is not None:
            assert time.monotonic() < deadline, "the lease was never released"
            await asyncio.sleep(0.005)
        out = await Agent(ScriptedModel(["done"]), db=inner).continue_run_async(
            run_id=failed.run_id, return_output=True
        )
        assert out.state is RunState.DONE

    run(scenario())
    run(inner.close())


# -- Redis restarted while a run holds its lease ----------------------------------------------


def test_a_redis_restart_mid_run_leaves_a_lease_this_process_takes_back(tmp_path: Path) -> None:
    reason = redis_available()
    if reason is not None or shutil.which("redis-server") is None:
        skip_or_fail(reason or "redis-server is not on PATH")
    from durable_agent.backends.redis import RedisBackend

    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:

        async def step(name: str) -> str:
            """Redis dies while this runs: the result's append and the release fail."""
            server.kill()
            return name

        def agent() -> Agent:
            store = RedisBackend(server.url, socket_timeout=2, connect_timeout=1)
            return Agent(tool_script(), db=store, tools=[step], lease_ttl=600)

        first = agent()
        task = Task("go")

        async def start() -> None:
            with pytest.raises(StoreUnavailableError) as failed:
                await first.do_async(task)
            notes = "\n".join(getattr(failed.value, "__notes__", ()))
            assert "its lease could not be released" in notes

        run(start())
        server.start()  # same port, same append-only file: the lease is still there
        assert task.run_id is not None
        run_id = task.run_id

        async def resume() -> None:
            held = (await first.db.get_run(run_id)).lease
            assert held is not None
            assert held.owner == LeaseOwner.process().id  # 600 s left, and no wait
            second = Agent(tool_script(), db=first.db, tools=[Tool(_step, name="step")])
            try:
                assert await second.continue_run_async(run_id=run_id) == "done"
            except RunBusyError as busy:  # the defect: this process blocked by itself
                pytest.fail(f"this process was refused its own run: {busy}")
            await first.db.close()

        run(resume())
    finally:
        server.kill()


# -- a second cancellation during the settle ---------------------------------------------------


@pytest.mark.parametrize("call", ["create_run", "acquire_lease"])
def test_a_second_cancellation_lets_the_caller_go_and_the_write_is_settled_alone(
    tmp_path: Path, call: str
) -> None:
    inner = SqliteBackend(tmp_path / "runs.db")
    wrapped = CancellingBackend(inner)
    agent = Agent(ScriptedModel(["done"]), db=wrapped, retry=1)

    async def scenario() -> None:
        task = Task("go")
        if call == "acquire_lease":
            with pytest.raises(Exception, match="boom"):
                await Agent(_failing(), db=inner, retry=1).do_async(task)
            assert task.run_id is not None
            run_id = task.run_id
            start = agent.continue_run_async(run_id=run_id)
        else:
            start = agent.do_async(task)
        gate = wrapped.gates[call] = asyncio.Event()
        running = asyncio.ensure_future(start)
        await wrapped.entered.wait()  # the write is in flight, held at the gate
        running.cancel()
        for _ in range(5):  # let the first cancellation reach the settle
            await asyncio.sleep(0)
        running.cancel()  # and a second one: the caller leaves at once
        with pytest.raises(asyncio.CancelledError):
            await running
        assert task.run_id is not None
        gate.set()  # the write lands now, after both cancellations
        deadline = time.monotonic() + 60  # a bound on failure only: generous on a busy machine
        while True:  # the settle finishes on its own: the store shows it
            try:
                header = await inner.get_run(task.run_id)
            except KeyError:
                header = None
            if header is not None and header.lease is None:
                break
            assert time.monotonic() < deadline, f"never settled: {header}"
            await asyncio.sleep(0.005)
        if call == "create_run":
            assert header.state is RunState.ERROR  # the interruption is recorded
        out = await agent.continue_run_async(run_id=task.run_id, return_output=True)
        assert out.state is RunState.DONE

    run(scenario())
    run(inner.close())
