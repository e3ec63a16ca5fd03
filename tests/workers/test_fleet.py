"""Workers as real processes sharing a store: submit, wait, SIGKILL, SIGSTOP, SIGTERM.

Each test runs ``durable-agent worker`` children over one store, with the tool
of `tests.workers.fleet_app`, which records its effects under a unique
idempotency key and logs every attempt. Barriers only: a child's marker file,
a store state, a log line, an exit; never a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from durable_agent.backend import Backend
from durable_agent.fsm import RunState
from durable_agent.records import FailedEvent, RunHeader, StoredRun, TransitionEvent
from durable_agent.registry import open_backend
from tests._barriers import DEADLINE, wait_until
from tests.workers import fleet_app
from tests.workers.fleet_app import TOOL_CALLS

ROOT = Path(__file__).resolve().parents[2]


class Fleet:
    """The children of one test, the store they share and the effects they wrote."""

    def __init__(self, folder: Path, url: str) -> None:
        self.dir = folder
        self.url = url
        self.env = {**os.environ, "FLEET_DIR": str(folder)}
        fleet_app.create_effects_db(folder)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    # -- children ------------------------------------------------------------------------

    def submit(self, count: int, queue: str = "default") -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.workers.fleet_app", "submit", self.url, str(count),
             queue],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=DEADLINE, check=True,
        )
        return done.stdout.split()

    def worker(self, name: str, *options: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable_agent", "worker", "--db", self.url,
             "--agent", "tests.workers.fleet_app:fleet", *options],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log,
        )
        log.close()
        self.workers[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def close_gate(self) -> None:
        (self.dir / "gate").touch()

    def open_gate(self) -> None:
        (self.dir / "gate").unlink(missing_ok=True)

    def started(self, pid: int | None = None) -> list[str]:
        folder = self.dir / "started"
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        return [n for n in names if pid is None or n.endswith(f"-{pid}")]

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=DEADLINE)

    # -- the store and the effects ---------------------------------------------------------

    def read(self, run_ids: list[str]) -> dict[str, StoredRun]:
        async def main() -> dict[str, StoredRun]:
            backend: Backend = open_backend(self.url)
            async with backend:
                return {r: await backend.load_run(r) for r in run_ids}

        return asyncio.run(main())

    def headers(self, run_ids: list[str]) -> dict[str, RunHeader]:
        return {r: s.header for r, s in self.read(run_ids).items()}

    def all_rest(self, run_ids: list[str], state: RunState = RunState.DONE) -> bool:
        return all(h.state is state for h in self.headers(run_ids).values())

    def effects(self) -> tuple[dict[str, int], dict[str, int]]:
        """Recorded effects per run, and attempts per idempotency key."""
        with closing(sqlite3.connect(self.dir / "effects.db")) as conn:
            recorded = dict(conn.execute("SELECT run_id, count(*) FROM effects GROUP BY run_id"))
            tried = dict(conn.execute("SELECT key, count(*) FROM attempts GROUP BY key"))
        return recorded, tried

    def check_finished(self, run_ids: list[str], *, reruns_at_most: int) -> dict[str, StoredRun]:
        """Every run DONE, each effect recorded once, re-runs bounded, logs gap-free."""
        stored = self.read(run_ids)
        for run_id, run in stored.items():
            assert run.header.state is RunState.DONE, run_id
            assert run.header.lease is None
            assert [e.seq for e in run.events] == list(range(1, len(run.events) + 1))
        recorded, tried = self.effects()
        assert recorded == dict.fromkeys(run_ids, TOOL_CALLS)  # 0 duplicate recorded effects
        assert len(tried) == len(run_ids) * TOOL_CALLS
        assert sum(tried.values()) - len(tried) <= reruns_at_most
        return stored


@pytest.fixture
def sqlite_fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, f"sqlite:///{tmp_path / 'runs.db'}")
    yield fleet
    fleet.stop()


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def any_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        server = request.getfixturevalue(
            "redis_url" if request.param == "redis" else "redis_cluster_url"
        )
        url = f"{server}?prefix=fleet-{uuid.uuid4().hex[:10]}:"
    fleet = Fleet(tmp_path, url)
    yield fleet
    fleet.stop()


def test_submit_in_one_process_wait_in_another_and_a_worker_in_a_third(
    sqlite_fleet: Fleet,
) -> None:
    fleet = sqlite_fleet
    run_ids = fleet.submit(3)
    assert fleet.all_rest(run_ids, RunState.PENDING)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.fleet_app", "wait", fleet.url, *run_ids],
        cwd=ROOT, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    worker = fleet.worker("w1", "--concurrency", "2")
    out, err = waiter.communicate(timeout=2 * DEADLINE)
    assert waiter.returncode == 0, err
    assert out.splitlines() == [f"{r} DONE all done" for r in run_ids]
    fleet.check_finished(run_ids, reruns_at_most=0)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=DEADLINE) == 0
    log = fleet.log("w1")
    assert log.count("claimed run") == 3
    assert log.count("rests in DONE") == 3


def test_a_sigkilled_workers_runs_are_taken_over_with_no_effect_recorded_twice(
    any_fleet: Fleet,
) -> None:
    fleet = any_fleet
    fleet.close_gate()
    run_ids = fleet.submit(6)
    first = fleet.worker("first", "--concurrency", "3")
    wait_until(lambda: len(fleet.started(first.pid)) >= 3, awaiting="3 calls in flight",
               processes=[first])
    first.kill()
    first.wait(timeout=DEADLINE)
    fleet.open_gate()
    fleet.worker("second", "--concurrency", "6")
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE",
               processes=list(fleet.workers.values())[1:])
    stored = fleet.check_finished(run_ids, reruns_at_most=3)  # the calls in flight at the kill
    assert fleet.log("second").count("took over run") == 3
    taken = [s for s in stored.values() if s.header.lease_generation >= 2]
    assert len(taken) == 3  # the new owner's generation fenced the dead one


def test_a_frozen_worker_is_taken_over_and_its_late_writes_are_refused(
    sqlite_fleet: Fleet,
) -> None:
    fleet = sqlite_fleet
    fleet.close_gate()
    run_ids = fleet.submit(2)
    frozen = fleet.worker("frozen", "--concurrency", "2")
    wait_until(lambda: len(fleet.started(frozen.pid)) >= 2, awaiting="2 calls in flight",
               processes=[frozen])
    frozen.send_signal(signal.SIGSTOP)  # alive but silent: its registration lapses
    fleet.open_gate()
    fleet.worker("second", "--concurrency", "2")
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE",
               processes=[fleet.workers["second"]])
    frozen.send_signal(signal.SIGCONT)
    wait_until(
        lambda: fleet.log("frozen").count("another owner holds it now") >= 2,
        awaiting="the thawed worker's appends refused by the fence",
        processes=[frozen],
    )
    fleet.check_finished(run_ids, reruns_at_most=2)
    assert fleet.log("second").count("took over run") == 2


def test_sigterm_hands_runs_over_at_their_next_model_call_without_cutting_an_effect(
    sqlite_fleet: Fleet,
) -> None:
    fleet = sqlite_fleet
    fleet.close_gate()
    run_ids = fleet.submit(2)
    first = fleet.worker("first", "--concurrency", "2", "--grace", "120")
    wait_until(lambda: len(fleet.started(first.pid)) >= 2, awaiting="2 calls in flight",
               processes=[first])
    first.send_signal(signal.SIGTERM)
    fleet.open_gate()  # the calls in flight finish, then each run stops before its model call
    assert first.wait(timeout=DEADLINE) == 0
    for run_id, run in fleet.read(run_ids).items():
        assert run.header.state is RunState.MODEL_CALL, run_id
        assert run.header.lease is None  # released: claimable at once
        assert not any(isinstance(e, FailedEvent) for e in run.events)
    assert fleet.log("first").count("for another worker (stopping)") == 2
    fleet.worker("second", "--concurrency", "2")
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE",
               processes=[fleet.workers["second"]])
    fleet.check_finished(run_ids, reruns_at_most=0)
    assert fleet.log("second").count("claimed run") == 2  # released, not taken over


def test_an_effect_still_running_after_the_grace_period_is_cut_recorded_and_handed_over(
    sqlite_fleet: Fleet,
) -> None:
    fleet = sqlite_fleet
    fleet.close_gate()
    (run_id,) = fleet.submit(1)
    first = fleet.worker("first", "--grace", "0.2")
    wait_until(lambda: len(fleet.started(first.pid)) >= 1, awaiting="a call in flight",
               processes=[first])
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=DEADLINE) == 0
    run = fleet.read([run_id])[run_id]
    assert run.header.state is RunState.TOOL_EXEC
    assert run.header.lease is None
    failed, resumed = run.events[-2:]
    assert isinstance(failed, FailedEvent)
    assert failed.error.retryable
    assert isinstance(resumed, TransitionEvent)
    assert resumed.trigger == "resume"
    assert "after cutting it" in fleet.log("first")
    fleet.open_gate()
    fleet.worker("second")
    wait_until(lambda: fleet.all_rest([run_id]), awaiting="the run DONE",
               processes=[fleet.workers["second"]])
    fleet.check_finished([run_id], reruns_at_most=1)


def test_slots_and_max_running_are_never_exceeded(sqlite_fleet: Fleet) -> None:
    fleet = sqlite_fleet
    fleet.close_gate()
    run_ids = fleet.submit(8, "q")
    options = ("--concurrency", "2", "--max-running", "q=3")
    workers = [fleet.worker("a", *options), fleet.worker("b", *options)]
    wait_until(lambda: len(fleet.started()) >= 3, awaiting="3 calls in flight",
               processes=workers)
    live = [h for h in fleet.headers(run_ids).values() if h.lease is not None]
    assert len(live) == 3
    owners = [h.lease.owner for h in live if h.lease is not None]
    assert max(owners.count(o) for o in owners) <= 2
    fleet.open_gate()
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE", processes=workers)
    fleet.check_finished(run_ids, reruns_at_most=0)
    with closing(sqlite3.connect(fleet.dir / "effects.db")) as conn:
        mine, whole = conn.execute("SELECT max(mine), max(fleet) FROM peaks").fetchone()
    assert mine <= 2
    assert whole <= 3
