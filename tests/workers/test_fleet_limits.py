"""``max_running`` across worker processes, on the stores that enforce it in the claim itself.

On Redis Cluster that is the queue places of `durable_agent.backends._redis_cluster_places`.

Three ``durable-agent worker`` processes with three slots each serve one queue
capped at two running runs. The tool of `tests.workers.fleet_app` records,
under one lock, every call entering and leaving it with the worker's name,
and the number of calls inside at each entry (``peaks``): the overlap may
reach the cap and never pass it, before a SIGKILL, while its runs are taken
over and after. Barriers only: marker files, log lines, store state.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests._barriers import DEADLINE, wait_until
from tests.workers.fleet_harness import Fleet

CAP = 2


@pytest.fixture(params=["redis", "redis_cluster", "jsonfile"])
def capped_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param in ("redis", "redis_cluster"):
        server = request.getfixturevalue(f"{request.param}_url")
        url = f"{server}?prefix=cap-{uuid.uuid4().hex[:10]}:"
    else:
        url = f"file://{tmp_path / 'runs'}"
    fleet = Fleet(tmp_path, url)
    fleet.env["FLEET_LEASE_TTL"] = "5"
    yield fleet
    fleet.stop()


def _calls(names: list[str]) -> set[tuple[str, str]]:
    """Started markers ``<run>-<n>-<worker>`` as (``<run>-<n>``, worker) pairs."""
    return {(call, who) for call, _, who in (name.rpartition("-") for name in names)}


def _peak(fleet: Fleet) -> int:
    with closing(sqlite3.connect(fleet.dir / "effects.db", timeout=DEADLINE)) as conn:
        (whole,) = conn.execute("SELECT max(fleet) FROM peaks").fetchone()
    return int(whole or 0)


def test_workers_never_run_more_than_max_running_and_a_killed_ones_runs_are_taken_over(
    capped_fleet: Fleet,
) -> None:
    fleet = capped_fleet
    fleet.close_gate()
    options = ("--concurrency", "3", "--max-running", f"q={CAP}")
    for name in ("a", "b", "c"):
        fleet.worker(name, *options, tagged=True)
    workers = list(fleet.workers.values())
    # Every worker idle and waiting before the runs arrive, so their claims race.
    wait_until(lambda: all(" started: " in fleet.log(n) for n in fleet.workers),
               awaiting="three idle workers", processes=workers)
    run_ids = fleet.submit(8, "q")
    wait_until(lambda: len(fleet.started()) >= CAP, awaiting=f"{CAP} calls in flight",
               processes=workers)
    # Nine free slots race for the queue; the gate holds every call that gets in,
    # so a claim past the cap would show as a third call in ``peaks`` (checked
    # at the end, over the whole test) and as a third live lease here.
    live = [h for h in fleet.headers(run_ids).values() if h.lease is not None]
    assert len(live) <= CAP
    victim = sorted(fleet.started())[0].rsplit("-", 1)[1]
    held = [call for call, who in _calls(fleet.started()) if who == victim]
    fleet.workers[victim].kill()
    fleet.workers[victim].wait(timeout=DEADLINE)
    with closing(sqlite3.connect(fleet.dir / "effects.db", timeout=DEADLINE)) as conn:
        conn.execute("DELETE FROM live WHERE who = ?", (victim,))  # it runs nothing any more
        conn.commit()
    others = [p for name, p in fleet.workers.items() if name != victim]

    def taken_over() -> bool:
        again = {call for call, who in _calls(fleet.started()) if who != victim}
        return set(held) <= again

    wait_until(taken_over, awaiting=f"the killed worker's {len(held)} calls re-run by others",
               processes=others)
    live = [h for h in fleet.headers(run_ids).values() if h.lease is not None]
    assert len(live) <= CAP
    assert _peak(fleet) <= CAP
    fleet.open_gate()
    wait_until(lambda: fleet.all_rest(run_ids), awaiting="every run DONE", processes=others)
    fleet.check_finished(run_ids, reruns_at_most=len(held))
    takeovers = sum(fleet.log(n).count("took over run") for n in fleet.workers if n != victim)
    assert takeovers == len(held)
    assert _peak(fleet) == CAP  # reached, never passed
