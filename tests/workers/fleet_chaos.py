"""A bounded, seeded schedule of faults on a working fleet, and the check of its outcome.

`run_chaos` submits the runs, starts the workers, and at seeded points (counted
in tool calls started, never in seconds) injects each fault of its list:

* ``kill``: SIGKILL a worker with calls inside the tool, and start a replacement;
* ``freeze``: SIGSTOP a worker with every slot inside a tool call, until its
  runs are taken over and the lease TTL has passed, then SIGCONT;
* ``cut``: the same with the worker's network link down instead (a worker on a
  host of its own, `tests.workers.hosts`).

Each fault is set up with progress held at the gate (`Fleet.close_gate`): no
call leaves the tool, so no run can finish, and the workers' slots fill with
calls. The backlog is topped up first, so every slot can fill however far
the fleet got while the test was waiting (a fast fleet finishes most runs
during one isolation's wait for the TTL). The victim is then drawn, with the
seed, among the workers the store and the markers show ready: calls inside
the tool for a kill, every slot inside for a freeze or a cut. So the schedule
never waits for a particular worker to fill up, and no fault hits a worker
that has not started yet.

Then every run must be DONE and pass `tests.workers.fleet_check.check_fleet`,
and each frozen or cut worker must have had every run it held taken over and,
once back, every write it tried on them refused by the fence.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests._barriers import wait_until
from tests._freeze import freeze
from tests.workers.fleet_app import TOOL_CALLS
from tests.workers.fleet_check import FleetReport, check_fleet, refused_runs
from tests.workers.fleet_harness import Fleet
from tests.workers.hosts import Host

_AT_REST = frozenset({RunState.DONE, RunState.ERROR, RunState.WAITING, RunState.CANCELLED})


@dataclass
class Member:
    """One worker of the fleet: the child to watch, the process to signal, its owner ids."""

    name: str
    """Its log's name and its ``FLEET_WORKER`` tag (and host name, on a host of its own)."""
    proc: subprocess.Popen[bytes]
    pid: int
    """The worker process itself (under ``unshare`` it is the child's child)."""
    owns: Callable[[str], bool]
    """Whether a lease owner id is this worker's."""
    host: Host | None = None


Spawn = Callable[[str, Host | None], Member]
"""Start a worker named so, on the given host (or the one the spawner picks)."""


@dataclass(frozen=True)
class Isolation:
    """A freeze or a cut: who, the runs it held, and for how long it was away."""

    kind: str
    victim: Member
    held: frozenset[str]
    successors: dict[str, Lease]
    """The lease another owner held on each run of ``held`` still moving once it was taken."""
    calls: int
    """Its calls inside the tool when it went away."""
    seconds: float


@dataclass(frozen=True)
class ChaosResult:
    run_ids: list[str]
    report: FleetReport
    kills: int
    isolations: list[Isolation]
    victims: list[str]
    """The worker each fault hit, in order (each had a call inside the tool, so wrote)."""


def run_chaos(
    fleet: Fleet,
    spawn: Spawn,
    *,
    runs: int,
    workers: int,
    concurrency: int,
    faults: list[str],
    seed: int,
    ttl: float,
    diagnose: Callable[[], str] = lambda: "",
) -> ChaosResult:
    """Run the schedule (see the module docstring) and check the outcome.

    ``diagnose`` adds what the store can tell to the message of a wait that fails.
    """
    rng = random.Random(seed)
    run_ids = fleet.submit(runs)
    members = [spawn(f"w{n}", None) for n in range(workers)]
    born = workers
    order = list(faults)
    rng.shuffle(order)
    total = runs * TOOL_CALLS
    marks = sorted(rng.sample(range(total // 10, total * 6 // 10), len(order)))
    isolations: list[Isolation] = []
    victims: list[str] = []
    kills = 0
    # Enough PENDING runs for every slot of the fleet (a replacement's included) to fill.
    reserve = (workers + 1) * concurrency
    for kind, mark in zip(order, marks, strict=True):
        wait_until(lambda: len(fleet.started()) >= mark,  # noqa: B023 - called at once
                   awaiting=f"{mark} tool calls started", processes=_procs(members))
        fleet.close_gate()
        run_ids.extend(_top_up(fleet, reserve))
        away = {i.victim.name for i in isolations}
        ready = [m for m in members if m.name not in away]
        need = 1 if kind == "kill" else concurrency
        try:
            victim = _victim(fleet, rng, ready, need, kind)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnose()}") from None
        victims.append(victim.name)
        if kind == "kill":
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait()
            fleet.open_gate()
            members.remove(victim)
            members.append(spawn(f"w{born}", victim.host))
            born += 1
            kills += 1
        else:
            others = [m for m in members if m is not victim]
            try:
                isolations.append(_isolate(fleet, kind, victim, others, concurrency, ttl))
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{diagnose()}") from None
    def at_rest() -> bool:
        # A listing by state is not a snapshot on Redis: a run moving from one
        # state's index to another's while it is read can be missed. Each header
        # is read as well, once the listing shows none moving.
        return not fleet.moving() and all(
            h.state in _AT_REST for h in fleet.headers(run_ids).values()
        )

    wait_until(at_rest, awaiting="every run at rest", processes=_procs(members))
    for isolation in isolations:
        name = isolation.victim.name
        wait_until(
            lambda: isolation.held <= refused_runs(fleet.log(name)),  # noqa: B023
            awaiting=f"the writes of {name} refused by the fence once back from its "
                     f"{isolation.kind}",
            processes=[isolation.victim.proc],
        )
    report = check_fleet(fleet.read(run_ids), fleet.dir, tool_calls=TOOL_CALLS)
    for isolation in isolations:
        assert isolation.held <= _taken(report, isolation)
        assert isolation.seconds > ttl
    return ChaosResult(run_ids, report, kills, isolations, victims)


def _top_up(fleet: Fleet, reserve: int) -> list[str]:
    """Submit runs until ``reserve`` are PENDING; the ids of those submitted.

    Called with the gate closed: from then on claims only fill free slots (no
    run can finish), so the reserve is what the fleet can still take.
    """
    pending = sum(1 for h in fleet.moving() if h.state is RunState.PENDING)
    return fleet.submit(reserve - pending) if pending < reserve else []


def _victim(
    fleet: Fleet, rng: random.Random, ready: list[Member], calls: int, kind: str
) -> Member:
    """A worker of ``ready`` with ``calls`` calls inside the tool, drawn with ``rng``.

    Waits (the gate closed) for one to get there, then draws among all that
    have: the first to fill up is not always the victim.
    """
    full: list[Member] = []

    def found() -> bool:
        full[:] = [m for m in ready if fleet.in_tool(m.name) >= calls]
        return bool(full)

    wait_until(found, awaiting=f"a worker with {calls} call(s) inside the tool for a {kind}",
               processes=_procs(ready))
    return rng.choice(full)


def _isolate(
    fleet: Fleet, kind: str, victim: Member, others: list[Member], slots: int, ttl: float
) -> Isolation:
    """Freeze or cut ``victim`` (its slots full of calls held at the closed gate).

    The gate opens once it is away, so the others finish their calls and take
    its runs over; it is back once they hold all of them and the TTL has passed.
    """
    calls = fleet.in_tool(victim.name)
    assert calls >= slots, f"{victim.name} has {calls} calls inside the tool, not {slots}"
    if kind == "freeze":
        freeze(victim.pid)
    else:
        assert victim.host is not None, "a cut needs a worker on a host of its own"
        victim.host.cut()
    went = time.monotonic()
    # Read after it went away: from now on it cannot change what it holds.
    held = frozenset(
        h.run_id for h in fleet.moving() if h.lease is not None and victim.owns(h.lease.owner)
    )
    assert held, f"{victim.name} held no run when it went away"
    fleet.open_gate()

    successors: dict[str, Lease] = {}

    def taken() -> bool:
        if time.monotonic() - went <= ttl:
            return False
        leases = {h.run_id: h.lease for h in fleet.moving() if h.lease is not None}
        if any(victim.owns(lease.owner) for lease in leases.values()):
            return False
        successors.update((r, lease) for r, lease in leases.items() if r in held)
        return True

    wait_until(taken, awaiting=f"the runs of {victim.name} taken over after its {kind}",
               processes=_procs(others))
    seconds = time.monotonic() - went
    if kind == "freeze":
        os.kill(victim.pid, signal.SIGCONT)
    else:
        assert victim.host is not None
        victim.host.restore()
    return Isolation(kind, victim, held, successors, calls, seconds)


def _taken(report: FleetReport, isolation: Isolation) -> set[str]:
    """The runs of ``isolation.held`` another owner took over, by the log or the store.

    The log shows a takeover by the new owner's first write (`FleetReport.taken_from`).
    A new owner killed before that write leaves none, and the run may come back
    to the victim itself, thawed (its log then jumps a generation): the lease
    `_isolate` saw in the store, another owner's under a generation no event
    was stamped with, is the proof of that takeover.
    """
    stamped: dict[str, set[int]] = {}
    for handover in report.handovers:
        stamped.setdefault(handover.run_id, set()).add(handover.generation)
    silent = {
        run_id for run_id, lease in isolation.successors.items()
        if not isolation.victim.owns(lease.owner)
        and lease.generation not in stamped.get(run_id, set())
        and lease.generation > min(stamped.get(run_id, {0}))
    }
    return report.taken_from(isolation.victim.owns) | silent


def _procs(members: list[Member]) -> list[subprocess.Popen[bytes]]:
    return [m.proc for m in members]
