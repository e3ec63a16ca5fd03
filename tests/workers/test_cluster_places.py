"""``max_running`` on Redis Cluster across processes: a killed claimer and a frozen worker.

A claimer SIGKILLed while holding a capped queue's only place keeps the queue
full until its lease expires; then a claim takes its run over (the run keeps
its one place) and never the next run. A worker SIGSTOPped inside a tool call
(its renewals frozen) has its run taken over by another worker while the
queue's other run waits; resumed, its late writes are refused by the fence.
A watcher reads the store the whole time: the queue's live leases never pass
the cap. Barriers only: pipes, marker files, log lines, store state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_agent.backend import Backend, ClaimedRun, LeaseOwner
from durable_agent.fsm import RunState
from durable_agent.registry import open_backend
from tests._barriers import DEADLINE, wait_until
from tests._freeze import freeze
from tests.backends.conftest import at, created, header, run, step
from tests.workers.fleet_harness import ROOT, Fleet
from tests.workers.lease_watch import LeaseWatcher

pytest.importorskip("redis", reason="the redis package is not installed")

@pytest.fixture
def cluster_store(redis_cluster_url: str) -> str:
    return f"{redis_cluster_url}?prefix=places-{uuid.uuid4().hex[:10]}:"


async def _claim_until(backend: Backend, cap: dict[str, int]) -> list[ClaimedRun]:
    """Claim until something is granted (the killed claimer's lease must lapse first)."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        got = await backend.claim_runs(LeaseOwner.current(), agents=["agent"], max_running=cap)
        if got:
            return got
        await asyncio.sleep(0.02)
    return []


def test_a_sigkilled_claimers_place_goes_with_its_run_to_the_claim_that_takes_it_over(
    cluster_store: str,
) -> None:
    url, cap = cluster_store, {"q": 1}

    async def submit() -> None:
        async with open_backend(url) as backend:
            for run_id, second in (("old", 1), ("new", 2)):
                await backend.create_run(header(run_id, queue="q", created_at=at(second)),
                                         [created()])

    run(submit())
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.cluster_claimer", url, "q", "1", "3"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        claimed = child.stdout.readline().split()  # the pipe is the barrier
        assert child.stdout.readline().strip() == "claimed"
    finally:
        child.kill()
        child.communicate(timeout=DEADLINE)  # and closes the pipes
    assert claimed[:2] == ["old", "1"]
    dead_owner = claimed[2]

    async def after() -> None:
        async with open_backend(url) as backend:
            with LeaseWatcher(url, "q") as watcher:
                # Until its lease expires the dead claimer's run fills the queue: "new"
                # is never granted, and then one claim takes "old" over, place and all.
                got = await _claim_until(backend, cap)
                assert [c.run_id for c in got] == ["old"]
                assert got[0].previous is not None
                assert got[0].previous.owner == dead_owner
                assert got[0].lease.generation == 2
                assert (await backend.get_run("new")).lease is None
                assert await backend.claim_runs(
                    LeaseOwner.current(), agents=["agent"], max_running=cap
                ) == []
                done = step(2, RunState.DONE)
                await backend.append("old", [done], expected_seq=1, lease=got[0].lease,
                                     release=True)
                again = await backend.claim_runs(
                    LeaseOwner.current(), agents=["agent"], max_running=cap
                )
                assert [c.run_id for c in again] == ["new"]
                watcher.read_from_now()  # while "new" holds the queue's place
            assert watcher.reads > 0
            assert watcher.most == 1

    run(after())


@pytest.fixture
def frozen_fleet(tmp_path: Path, cluster_store: str) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, cluster_store)
    fleet.env["FLEET_LEASE_TTL"] = "3"
    yield fleet
    fleet.stop()


def test_a_frozen_worker_resumed_after_its_run_was_taken_over_is_fenced_and_the_cap_holds(
    frozen_fleet: Fleet,
) -> None:
    fleet = frozen_fleet
    options = ("--concurrency", "2", "--max-running", "q=1")
    fleet.close_gate()
    frozen = fleet.worker("a", *options, tagged=True)
    wait_until(lambda: " started: " in fleet.log("a"), awaiting="worker a idle",
               processes=[frozen])
    with LeaseWatcher(fleet.url, "q") as watcher:
        run_ids = fleet.submit(2, "q")
        wait_until(lambda: fleet.in_tool("a") == 1, awaiting="a call of worker a inside the tool",
                   processes=[frozen])
        (held,) = {name.rsplit("-", 2)[0] for name in fleet.started("a")}
        freeze(frozen.pid)  # its lease renewals and registration freeze
        other = fleet.worker("b", *options, tagged=True)
        wait_until(lambda: fleet.in_tool("b") == 1, awaiting="worker b's call inside the tool",
                   processes=[other])
        # The frozen run's place went with it to b; the queue's other run waits.
        assert {name.rsplit("-", 2)[0] for name in fleet.started("b")} == {held}
        headers = fleet.headers(run_ids)
        assert [r for r, h in headers.items() if h.lease is None] == [
            r for r in run_ids if r != held
        ]
        assert "took over run " + held in fleet.log("b")
        watcher.read_from_now()  # while b holds the queue's place, inside the closed gate
        os.kill(frozen.pid, signal.SIGCONT)
        fleet.open_gate()
        wait_until(lambda: "another owner holds it now" in fleet.log("a"),
                   awaiting="worker a's late write refused", processes=[frozen, other])
        wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE",
                   processes=[frozen, other])
    assert watcher.reads > 0
    assert watcher.most == 1
    fleet.check_finished(run_ids, reruns_at_most=1)
