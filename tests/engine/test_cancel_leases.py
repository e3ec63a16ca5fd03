"""Cancelling the caller at every await of create and acquire never strands a run.

For each store (SQLite, JSON files, Redis), hundreds of `do_async` and
`continue_run_async` calls are interrupted at a planned store call
(`tests.engine.cancelling`): while it is in flight after 0..n event-loop
iterations, right after the store granted it, by the driver itself, or by a
connection lost after the command ran. After each one: the run's id is on the
task and on ``agent.last_run``, no lease is left behind, and the run is
continued to DONE from this same process without `RunBusyError`, and its log
stamps each lease it was driven under once (a write that landed although its
caller was cancelled carried the stamp: the interruption must not repeat it).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    RunBusyError,
    RunFailedError,
    RunNotFoundError,
    RunState,
    ScriptedFailure,
    ScriptedModel,
    StoreUnavailableError,
    Task,
)
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.records import Lease
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
from tests.engine.cancelling import CancellingBackend, Mode, Plan

KINDS = ["sqlite", "jsonfile", "redis"]
SETTLED: tuple[Mode, ...] = ("after", "self", "fail")


@pytest.fixture(params=KINDS)
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Backend]]:
    """A factory of the store under test (opened in the test's event loop)."""
    kind: str = request.param
    # This sweeps the engine's handling of interruptions, not the disk: on a
    # RAM disk, where there is one, an fsync costs nothing and 400 runs take
    # seconds on a busy machine.
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    if kind == "sqlite":
        from durable_agent.backends.sqlite import SqliteBackend

        yield lambda: SqliteBackend(folder / "runs.db", synchronous="OFF")
    elif kind == "jsonfile":
        from durable_agent.backends.jsonfile import JsonFileBackend

        yield lambda: JsonFileBackend(folder / "runs")
    else:
        from durable_agent.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"cancel-{uuid.uuid4().hex[:8]}:"
        yield lambda: RedisBackend(url, prefix=prefix)
    if folder != tmp_path:
        shutil.rmtree(folder, ignore_errors=True)


def done_model() -> ScriptedModel:
    return ScriptedModel(["done"])


@dataclass
class Sweep:
    """Interrupts calls through ``wrapped`` and checks each run afterwards on ``store``."""

    store: Backend
    wrapped: CancellingBackend = field(init=False)
    agent: Agent = field(init=False)
    cancelled: int = 0
    while_opening: int = 0
    failures: list[str] = field(default_factory=list)
    where: Counter[str] = field(default_factory=Counter)
    """Where each cancellation fired: the store call in flight, or "later"."""
    last_fired: str | None = None

    def __post_init__(self) -> None:
        self.wrapped = CancellingBackend(self.store)
        self.agent = Agent(done_model(), db=self.wrapped, retry=1)

    async def interrupt(self, start: Callable[[], Awaitable[object]], plan: Plan) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(start())
        self.wrapped.arm(plan, task)
        try:
            await task
        except asyncio.CancelledError:
            self.cancelled += 1
            self.while_opening += self.wrapped.fired_while_opening
            self.where[self.wrapped.fired_in or "?"] += 1
        except StoreUnavailableError:
            assert plan.mode == "fail", plan
        except RunBusyError as busy:
            self.failures.append(f"{plan}: {busy}")
        finally:
            self.last_fired = self.wrapped.fired_in
            self.wrapped.arm(None, None)

    async def check(
        self, run_id: str | None, task: Task | None, label: str, planted: Lease | None = None
    ) -> None:
        """The run is findable, holds no new lease, and goes on to DONE from this process.

        ``planted`` is a lease the test left on the run before the call: an
        interruption before the acquire leaves it as it was, which is fine as
        long as it does not block this process.
        """
        assert run_id is not None, f"{label}: the run id was never handed out"
        if task is not None:  # a do_async: its caller may know the id only from here
            last = self.agent.last_run
            assert last is not None, label
            assert last.run_id == run_id, f"{label}: last_run is {last.run_id}, not {run_id}"
        try:
            header = await self.store.get_run(run_id)
        except RunNotFoundError:
            header = None
        if header is not None and header.lease not in (None, planted):
            self.failures.append(f"{label}: left holding the lease of {header.lease.owner}")
        # Alternately the same agent and a new one: both are this process.
        agent = self.agent if len(label) % 2 else Agent(done_model(), db=self.store, retry=1)
        try:
            if header is None:
                assert task is not None, f"{label}: an existing run vanished"
                out = await agent.do_async(task, return_output=True)
            else:
                out = await agent.continue_run_async(run_id=run_id, return_output=True)
        except RunBusyError as busy:
            self.failures.append(f"{label}: the continue was refused: {busy}")
            return
        assert out.state is RunState.DONE, f"{label}: {out.state}"
        assert (await self.store.get_run(run_id)).lease is None, label
        stamps = [
            (e.seq, e.lease_taken.generation)
            for e in (await self.store.load_run(run_id)).events
            if e.lease_taken is not None
        ]
        generations = [g for _, g in stamps]
        if generations != sorted(set(generations)):  # one stamp per lease, in order
            self.failures.append(f"{label}: lease stamps (seq, generation) {stamps}")

    async def created(self, plan: Plan) -> None:
        task = Task("hi")
        await self.interrupt(lambda: self.agent.do_async(task, return_output=True), plan)
        await self.check(task.run_id, task, f"do_async {plan}")

    async def continued(self, plan: Plan, left_by: LeaseOwner | None) -> None:
        failing = Agent(
            ScriptedModel(["x"], failures=[ScriptedFailure(0, RuntimeError("boom"), 10**9)]),
            db=self.store,
            retry=1,
        )
        task = Task("hi")
        with pytest.raises(RunFailedError):
            await failing.do_async(task)
        assert task.run_id is not None
        planted = None
        if left_by is not None:  # a lease this process left behind, live for a minute
            planted = await self.store.acquire_lease(task.run_id, left_by, ttl=60)
        run_id = task.run_id
        await self.interrupt(lambda: self.agent.continue_run_async(run_id=run_id), plan)
        await self.check(run_id, None, f"continue {plan} left_by={left_by}", planted)


OPENING = 400
"""Cancellations that must land in create or acquire (before the run's first append)."""

HOPS = 40
"""At most this many event-loop iterations into a call (most return within ~20)."""


async def sweep_calls(
    sweep: Sweep, attempt: Callable[[Plan], Awaitable[None]], calls: int
) -> None:
    """Interrupt each of the first ``calls`` store calls in every way, and 0, 1, 2... hops in.

    The hops stop once two in a row no longer catch the call in flight: the
    call returns quicker on this store, and further hops would only repeat the
    last case.
    """
    for call in range(1, calls + 1):
        for mode in SETTLED:
            await attempt(Plan(call, mode))
        missed = 0
        for hops in range(HOPS):
            await attempt(Plan(call, "hops", hops))
            fired = sweep.last_fired
            in_flight = fired is not None and not fired.startswith(("after ", "later"))
            missed = 0 if in_flight else missed + 1
            if missed >= 2:
                break


def test_400_cancellations_in_create_and_acquire_leave_no_lease_and_every_run_continues(
    inner: Callable[[], Backend],
) -> None:
    async def scenario() -> Sweep:
        async with inner() as store:
            sweep = Sweep(store)
            for _ in range(10):  # rounds, until enough cancellations hit create or acquire
                # do_async: the create (call 1), then the first append (2) in the guard.
                await sweep_calls(sweep, sweep.created, 2)
                # continue of an ERROR run: load (1), acquire (2), load (3), the
                # first append (4), which carries the new lease's stamp.
                await sweep_calls(sweep, lambda p: sweep.continued(p, None), 4)
                # ... whose lease this process left behind, live: as the engine's
                # owner (the store grants it back), and as another owner object
                # with this pid (busy, read, taken over: calls 2 to 4; load 5).
                await sweep_calls(sweep, lambda p: sweep.continued(p, LeaseOwner.process()), 3)
                await sweep_calls(sweep, lambda p: sweep.continued(p, LeaseOwner.current()), 5)
                if sweep.while_opening >= OPENING:
                    break
            return sweep

    sweep = asyncio.run(scenario())
    assert not sweep.failures, "\n".join(sweep.failures[:20])
    assert sweep.while_opening >= OPENING, (
        f"only {sweep.while_opening} of {sweep.cancelled} cancellations hit create or "
        f"acquire: {sweep.where.most_common()}"
    )
