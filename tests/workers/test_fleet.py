"""Workers as real processes sharing a store: submit, wait, SIGKILL, SIGSTOP, SIGTERM.

Each test runs ``durable-agent worker`` children over one store, with the tool
of `tests.workers.fleet_app`, which records its effects under a unique
idempotency key and logs every attempt. Barriers only: a child's marker file,
a store state, a log line, an exit; never a sleep.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from durable_agent.fsm import RunState
from durable_agent.records import FailedEvent, TransitionEvent
from tests._barriers import DEADLINE, wait_until
from tests._freeze import freeze
from tests.workers.fleet_chaos import Member, run_chaos
from tests.workers.fleet_check import pid_of, refused_runs
from tests.workers.fleet_harness import ROOT, Fleet
from tests.workers.hosts import Host


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
    report = fleet.check_finished(run_ids, reruns_at_most=3)  # the calls in flight at the kill
    assert fleet.log("second").count("took over run") == 3
    taken = report.taken_from(lambda owner: pid_of(owner) == first.pid)
    assert len(taken) == 3  # the new owner's generation fenced the dead one
    assert report.in_flight == 3


def test_a_frozen_worker_is_taken_over_and_its_late_writes_are_refused(
    sqlite_fleet: Fleet,
) -> None:
    fleet = sqlite_fleet
    fleet.close_gate()
    run_ids = fleet.submit(2)
    frozen = fleet.worker("frozen", "--concurrency", "2")
    wait_until(lambda: len(fleet.started(frozen.pid)) >= 2, awaiting="2 calls in flight",
               processes=[frozen])
    freeze(frozen.pid)  # alive but silent, between two writes: its registration lapses
    fleet.open_gate()
    fleet.worker("second", "--concurrency", "2")
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE",
               processes=[fleet.workers["second"]])
    frozen.send_signal(signal.SIGCONT)
    report = fleet.check_finished(run_ids, reruns_at_most=2)
    taken = report.taken_from(lambda owner: pid_of(owner) == frozen.pid)
    assert taken == set(run_ids)
    wait_until(
        lambda: taken <= refused_runs(fleet.log("frozen")),
        awaiting="the thawed worker's appends refused by the fence",
        processes=[frozen],
    )
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


@pytest.fixture(params=["sqlite", "redis"])
def chaos_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix=chaos-{uuid.uuid4().hex[:10]}:"
    fleet = Fleet(tmp_path, url)
    fleet.env["FLEET_LEASE_TTL"] = str(CHAOS_TTL)
    yield fleet
    fleet.stop()


CHAOS_TTL = 2.0


def test_random_kills_and_a_freeze_on_a_seeded_schedule_leave_every_run_done_once(
    chaos_fleet: Fleet,
) -> None:
    """The many-hosts scenario (test_fleet_hosts.py) without namespaces: no cut, one host.

    No freeze on SQLite: a process stopped inside a write transaction holds the
    file's write lock, and every other writer waits until it resumes (one host,
    the operating system's lock). The dedicated freeze test above, with the
    default lease TTL, writes rarely enough to run into that seldom.
    """
    fleet = chaos_fleet
    sqlite = fleet.url.startswith("sqlite")

    def spawn(name: str, host: Host | None) -> Member:
        proc = fleet.worker(name, "--concurrency", "3", tagged=True)
        return Member(name, proc, proc.pid, owns=lambda owner: pid_of(owner) == proc.pid)

    faults = ["kill", "kill", "kill"] if sqlite else ["kill", "kill", "freeze"]
    result = run_chaos(fleet, spawn, runs=40, workers=3, concurrency=3, faults=faults, seed=7,
                       ttl=CHAOS_TTL)
    assert result.kills == faults.count("kill")
    assert [i.calls for i in result.isolations] == [3] * faults.count("freeze")
    assert result.report.reruns <= result.report.in_flight
