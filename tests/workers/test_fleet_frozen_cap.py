"""A worker frozen past its TTL keeps its run's place in a capped queue, on every store.

Worker ``a`` holds the only place of queue ``q`` (``max_running`` 1) inside a
tool call when it is stopped with SIGSTOP; a run of higher priority is then
submitted to ``q`` and worker ``b`` starts. Once ``a``'s lease has lapsed (its
TTL, or its registration), ``b`` claims: it must take ``a``'s run over, never
start the other one, because nothing stops ``a`` from writing again when it
thaws unless its run was taken over (the fence refuses only a stale
generation): had ``b`` started the other run, ``a``'s renewals and writes
would be granted on its thaw, and two runs of ``q`` would hold live leases.
Then ``a`` is resumed: its late writes are refused, and the queue's live
leases, read by a watcher all along, never pass 1. Barriers only: marker
files, log lines, store state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_agent.backend import Backend
from durable_agent.registry import open_backend
from tests._barriers import wait_until
from tests._freeze import freeze
from tests.backends import postgres_server
from tests.workers.fleet_harness import Fleet
from tests.workers.lease_watch import LeaseWatcher, live_in, moving

_STORES = ["sqlite", "jsonfile", "postgres", "redis", "redis_cluster"]


@pytest.fixture(params=_STORES)
def frozen_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
    elif request.param == "jsonfile":
        url = f"file://{tmp_path / 'runs'}"
    elif request.param == "postgres":
        postgres_server.admin("SELECT 1")  # skips (fails under CI) when the server is down
        schema = postgres_server.new_schema()
        url = f"{postgres_server.URL}?schema={schema}"
    else:
        server = request.getfixturevalue(f"{request.param}_url")
        url = f"{server}?prefix=frozen-{uuid.uuid4().hex[:10]}:"
    fleet = Fleet(tmp_path, url)
    fleet.env["FLEET_LEASE_TTL"] = "3"
    try:
        yield fleet
    finally:
        fleet.stop()
        if schema is not None:
            postgres_server.drop(schema)


def _live(url: str, queue: str) -> list[str]:
    async def main() -> list[str]:
        backend: Backend = open_backend(url)
        async with backend:
            return [h.run_id for h in live_in(await moving(backend), queue)]

    return asyncio.run(main())


def test_a_frozen_workers_run_keeps_its_place_until_taken_over_and_the_cap_holds(
    frozen_fleet: Fleet,
) -> None:
    fleet = frozen_fleet
    options = ("--concurrency", "2", "--max-running", "q=1")
    fleet.close_gate()
    frozen = fleet.worker("a", *options, tagged=True)
    with LeaseWatcher(fleet.url, "q") as watcher:
        (held,) = fleet.submit(1, "q")
        wait_until(lambda: fleet.in_tool("a") == 1, awaiting="a call of worker a inside the tool",
                   processes=[frozen])
        freeze(frozen.pid)  # its lease renewals and registration freeze, between two writes
        (urgent,) = fleet.submit(1, "q", priority=9)
        other = fleet.worker("b", *options, tagged=True)
        wait_until(lambda: fleet.in_tool("b") == 1, awaiting="worker b's call inside the tool",
                   processes=[other])
        # b's one claim in q took the frozen run over; the higher priority run waits.
        assert {name.rsplit("-", 2)[0] for name in fleet.started("b")} == {held}
        assert fleet.headers([urgent])[urgent].lease is None
        assert len(_live(fleet.url, "q")) == 1
        watcher.read_from_now()  # while b holds the queue's place, inside the closed gate
        os.kill(frozen.pid, signal.SIGCONT)
        fleet.open_gate()
        wait_until(lambda: fleet.all_rest([held, urgent]), awaiting="every run DONE",
                   processes=[frozen, other])
    assert watcher.reads > 0
    assert watcher.most == 1
    fleet.check_finished([held, urgent], reruns_at_most=1)
    assert "took over run " + held in fleet.log("b")
    wait_until(lambda: "another owner holds it now" in fleet.log("a"),
               awaiting="worker a's late write refused", processes=[frozen])
