"""Many hosts on one machine: a PostgreSQL fleet that loses workers to kills, a cut and a freeze.

Each worker runs on a host of its own (`tests.workers.hosts`: a network, pid
and UTS namespace, reaching a private PostgreSQL over a veth), so to the lease
logic every worker is another machine: a dead one is noticed by its advisory
lock vanishing with its connection, and a cut or frozen one, whose connection
lingers, only by its lease lapsing on the server's clock. `run_chaos` SIGKILLs
random workers (starting replacements), cuts one worker's link and freezes
another past the lease TTL, on a seeded schedule; every run must finish with
each effect recorded once, and every write of the cut and the frozen worker,
once back, refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests._barriers import wait_until
from tests.workers.fleet_chaos import Member, run_chaos
from tests.workers.fleet_check import host_of, pid_of
from tests.workers.fleet_harness import Fleet
from tests.workers.hosts import Host, Network, PrivatePostgres, unavailable

WORKERS = 4
SLOTS = 4
RUNS = 200
TTL = 2.0
"""Seconds of every lease: short, so a cut or frozen worker's runs move on quickly."""
SEED = int(os.environ.get("FLEET_CHAOS_SEED", "12"))


class Hosts:
    """The private server, the hosts on its bridge, and the fleet of workers on them."""

    def __init__(self, fleet: Fleet, network: Network, server: PrivatePostgres) -> None:
        self.fleet = fleet
        self.network = network
        self.server = server
        self.on: dict[str, Host] = {}

    def spawn(self, name: str, host: Host | None) -> Member:
        """Start worker ``name`` on ``host``, or on a host no live worker is on."""
        if host is None:
            busy = {h.netns for n, h in self.on.items() if self.fleet.workers[n].poll() is None}
            host = next(h for h in self.network.hosts if h.netns not in busy)
        self.on[name] = host
        proc = self.fleet.worker(
            name, "--concurrency", str(SLOTS), url=self.server.url(self.network.address),
            prefix=host.prefix(name), tagged=True,
        )
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")

        def forked() -> bool:
            return bool(children.exists() and children.read_text().split())

        wait_until(forked, awaiting=f"unshare to start worker {name}", processes=[proc])
        pid = int(children.read_text().split()[0])
        return Member(name, proc, pid, owns=lambda owner: _host_name(owner) == name, host=host)


def _host_name(owner: str) -> str:
    return host_of(owner).partition("~pidns")[0]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the many-hosts test, but {reason}")
        pytest.skip(reason)
    with ExitStack() as cleanup:  # in reverse: workers, then the server, then the network
        network = Network()
        cleanup.callback(network.close)
        for _ in range(WORKERS):
            network.add()
        server = PrivatePostgres(network.address, str(network.subnet))
        cleanup.callback(server.stop)
        server.start()
        fleet = Fleet(tmp_path, server.url())
        fleet.env["FLEET_LEASE_TTL"] = str(TTL)
        cleanup.callback(fleet.stop)
        yield Hosts(fleet, network, server)


def test_a_fleet_of_hosts_survives_kills_a_partition_and_a_freeze_with_each_effect_once(
    hosts: Hosts,
) -> None:
    result = run_chaos(
        hosts.fleet, hosts.spawn, runs=RUNS, workers=WORKERS, concurrency=SLOTS,
        faults=["kill", "kill", "kill", "cut", "freeze"], seed=SEED, ttl=TTL,
        diagnose=hosts.server.sessions,
    )
    report = result.report
    assert len(result.run_ids) >= RUNS  # topped up when the fleet ran ahead of the schedule
    assert result.kills == 3
    assert sorted(i.kind for i in result.isolations) == ["cut", "freeze"]
    # Each worker was another host: its own host name and pid namespace, its pid 1.
    # Every victim had a call inside the tool, so its intent (and owner id) is in a
    # log; a replacement started late may have had nothing left to claim.
    names = {_host_name(o) for o in report.owners}
    assert set(result.victims) <= names
    assert len(names) >= 2
    assert len({host_of(o) for o in report.owners}) == len(names)
    assert {pid_of(o) for o in report.owners} == {1}
    assert report.reruns <= report.in_flight
    for isolation in result.isolations:
        assert isolation.calls == SLOTS  # in flight when it went away, each run again at most
