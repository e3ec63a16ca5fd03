"""Run-level retries across the whole listing: no run waits for another's backoff, or behind
a page of runs the worker cannot retry; the idle worker wakes for the earliest backoff.

The failed runs are written through the store's own calls, with the failure's time chosen
(``FailedEvent.at``), so "failed two hours ago" needs no waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, RunRetry, RunState, ScriptedModel, Worker
from durable_agent._worker_retry import RetryScan, hand_over
from durable_agent.backend import Backend, LeaseOwner, RunPage
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import ErrorInfo, FailedEvent, StoredRun, TransitionEvent
from tests._barriers import wait_until_async

HOUR = 3600.0
POLICY = RunRetry(attempts=3, backoff=HOUR, max_backoff=HOUR, jitter=0)
"""A retry is due an hour after the failure (no jitter: the due time is exact)."""


async def _failed(
    agent: Agent, *, ago: float, retryable: bool = True, queue: str = "default"
) -> str:
    """Submit a run of ``agent`` and record its failure in MODEL_CALL ``ago`` seconds ago."""
    db = agent.db
    run_id = (await agent.submit_async("try", queue=queue)).run_id
    lease = await db.acquire_lease(run_id, LeaseOwner.process(), ttl=30)
    start = TransitionEvent(seq=2, state=RunState.MODEL_CALL, trigger="start")
    lease = await db.append(run_id, [start], expected_seq=1, lease=lease)
    error = ErrorInfo(
        type="ModelHTTPError", message="provider outage", retryable=retryable, status_code=503
    )
    failed = FailedEvent(
        seq=3, state=RunState.ERROR, trigger="fail", error=error,
        failed_state=RunState.MODEL_CALL, at=datetime.now(UTC) - timedelta(seconds=ago),
    )
    await db.append(run_id, [failed], expected_seq=2, lease=lease, release=True)
    return run_id


def _resumes(stored: StoredRun) -> int:
    return sum(isinstance(e, TransitionEvent) and e.trigger == "resume" for e in stored.events)


def _due_at(stored: StoredRun) -> float:
    return stored.events[-1].at.timestamp() + HOUR


async def _listed_first(db: Backend) -> list[str]:
    page = await db.list_runs(states=[RunState.ERROR], limit=1000)
    return [h.run_id for h in page.runs]


def test_a_due_run_listed_after_one_still_backing_off_is_retried_at_once(
    durable_store: Callable[[], Backend],
) -> None:
    async def main() -> None:
        db = durable_store()
        agent = Agent(ScriptedModel(["ok"] * 2), db=db, name="flaky")
        due_now = await _failed(agent, ago=2 * HOUR)
        waiting = await _failed(agent, ago=0)  # newer: listed first
        listed = await _listed_first(db)
        assert listed.index(waiting) < listed.index(due_now)
        worker = Worker([agent], retry=POLICY)
        task = asyncio.create_task(worker.run(handle_signals=False))

        async def retried() -> bool:
            return (await db.get_run(due_now)).state is RunState.DONE

        await wait_until_async(retried, awaiting="the due run DONE after its retry")
        worker.stop()
        await asyncio.wait_for(task, 60)
        still = await db.load_run(waiting)
        assert still.header.state is RunState.ERROR
        assert _resumes(still) == 0
        assert _resumes(await db.load_run(due_now)) == 1
        await db.close()

    asyncio.run(main())


def test_a_retryable_run_behind_more_than_a_page_of_others_is_retried(
    durable_store: Callable[[], Backend],
) -> None:
    """130 ERROR runs listed before it: another agent's, another queue's, and spent ones."""

    async def main() -> None:
        db = durable_store()
        agent = Agent(ScriptedModel(["ok"]), db=db, name="flaky")
        stranger = Agent(ScriptedModel(["no"]), db=db, name="stranger")
        target = await _failed(agent, ago=2 * HOUR)
        others = [await _failed(stranger, ago=2 * HOUR) for _ in range(50)]
        others += [await _failed(agent, ago=2 * HOUR, queue="elsewhere") for _ in range(30)]
        others += [await _failed(agent, ago=2 * HOUR, retryable=False) for _ in range(50)]
        assert (await _listed_first(db))[-1] == target
        worker = Worker([agent], queues=["default"], retry=POLICY)
        task = asyncio.create_task(worker.run(handle_signals=False))

        async def retried() -> bool:
            return (await db.get_run(target)).state is RunState.DONE

        await wait_until_async(retried, awaiting="the run behind 130 others DONE")
        worker.stop()
        await asyncio.wait_for(task, 60)
        for run_id in others:
            stored = await db.load_run(run_id)
            assert (stored.header.state, _resumes(stored)) == (RunState.ERROR, 0)
        await db.close()

    asyncio.run(main())


class _CountingLoads(SqliteBackend):
    """A SQLite store that counts `load_run` per run id."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.loads: Counter[str] = Counter()

    async def load_run(self, run_id: str) -> StoredRun:
        self.loads[run_id] += 1
        return await super().load_run(run_id)


def test_the_scan_wakes_for_the_earliest_backoff_and_loads_an_unchanged_run_once(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        db = _CountingLoads(tmp_path / "runs.db")
        agent = Agent(ScriptedModel(["ok"]), db=db, name="flaky")
        # Due in 3500 s, 600 s and 2600 s: the earliest is in the middle of the listing.
        late, soon, middle = [await _failed(agent, ago=ago) for ago in (100, 3000, 1000)]
        spent = await _failed(agent, ago=2 * HOUR, retryable=False)
        dues = {r: _due_at(await db.load_run(r)) for r in (late, soon, middle)}
        db.loads.clear()
        scan = RetryScan(
            db, POLICY, agents=["flaky"], queues=None, walk_every=0, walk_share=None
        )

        assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
        assert scan.next_due == dues[soon]
        assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
        assert scan.next_due == dues[soon]
        assert db.loads == Counter({late: 1, soon: 1, middle: 1, spent: 1})  # once each

        # The soonest leaves ERROR (resumed by hand): the next wake-up is the next soonest.
        assert await hand_over(db, soon, LeaseOwner.process(), 30)
        assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
        assert scan.next_due == dues[middle]
        assert db.loads[late] == db.loads[middle] == 1
        await db.close()

    asyncio.run(main())


def test_the_scan_hands_back_every_due_run_up_to_the_free_slots(tmp_path: Path) -> None:
    async def main() -> None:
        db = SqliteBackend(tmp_path / "runs.db")
        agent = Agent(ScriptedModel(["ok"]), db=db, name="flaky")
        waiting = await _failed(agent, ago=0)
        due = {await _failed(agent, ago=2 * HOUR) for _ in range(3)}
        scan = RetryScan(db, POLICY, agents=["flaky"], queues=None)
        never = lambda: False  # noqa: E731

        first = await scan.due(limit=2, busy=(), stopping=never)
        assert len(first) == 2
        assert {d.header.run_id for d in first} < due
        assert all(d.retry == 1 for d in first)
        # Stopped at the limit: the next pass walks again at once, whatever walk_every says.
        busy = {d.header.run_id for d in first}
        second = await scan.due(limit=2, busy=busy, stopping=never)
        assert {d.header.run_id for d in second} == due - busy
        assert scan.next_due == _due_at(await db.load_run(waiting))
        stopped = RetryScan(db, POLICY, agents=["flaky"], queues=None)
        assert await stopped.due(limit=2, busy=(), stopping=lambda: True) == []
        await db.close()

    asyncio.run(main())


class _SlowPages(SqliteBackend):
    """A SQLite store on a clock of its own, each page of a listing taking ``page`` seconds."""

    def __init__(self, path: Path, page: float) -> None:
        super().__init__(path)
        self.now = time.time()
        self.page = page
        self.listings = 0

    async def list_runs(self, **filters: Any) -> RunPage:
        self.listings += 1
        self.now += self.page
        return await super().list_runs(**filters)


@pytest.mark.parametrize(("page", "gap"), [(0.01, 1.0), (0.2, 4.0)])
def test_the_scan_walks_again_after_a_second_or_twenty_times_its_last_walk(
    tmp_path: Path, page: float, gap: float
) -> None:
    """A walk may take a twentieth of the worker's time at most: 0.2 s, then 4 s of rest."""

    async def main() -> None:
        db = _SlowPages(tmp_path / "runs.db", page)
        await _failed(Agent(ScriptedModel([]), db=db, name="flaky"), ago=0, retryable=False)
        scan = RetryScan(db, POLICY, agents=["flaky"], queues=None, clock=lambda: db.now)

        async def walked() -> bool:
            before = db.listings
            assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
            return db.listings > before

        assert await walked()
        db.now += gap - page - 0.001  # measured from the walk's start
        assert not await walked()
        db.now += 0.002
        assert await walked()
        await db.close()

    asyncio.run(main())


def test_a_backoff_that_ends_is_acted_on_before_the_next_walk_was_due(tmp_path: Path) -> None:
    async def main() -> None:
        db = _SlowPages(tmp_path / "runs.db", 0.2)  # the next walk in 4 s
        run_id = await _failed(Agent(ScriptedModel([]), db=db, name="flaky"), ago=HOUR - 2)
        scan = RetryScan(db, POLICY, agents=["flaky"], queues=None, clock=lambda: db.now)
        assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
        assert scan.next_due is not None
        db.now = scan.next_due
        (due,) = await scan.due(limit=10, busy=(), stopping=lambda: False)
        assert due.header.run_id == run_id
        await db.close()

    asyncio.run(main())
