"""Two processes appending to one run at once, on every shared backend: exactly one wins
each seq, and no event is lost or duplicated."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durable_agent.records import TransitionEvent
from durable_agent.registry import open_backend
from tests._barriers import DEADLINE, wait_for_entries
from tests.backends import postgres_server
from tests.backends.conftest import new_run, run
from tests.backends.postgres_server import pg_schema, postgres_url  # noqa: F401  (fixtures)

TARGET = 80
"""The seq both writers race to."""

_WRITER = """
import asyncio, json, os, sys, time
from durable_agent.errors import ConcurrentUpdateError
from durable_agent.fsm import RunState
from durable_agent.records import Lease, TransitionEvent
from durable_agent.registry import open_backend

url, run_id, lease_json, ready, go, target = sys.argv[1:7]
lease = Lease.model_validate_json(lease_json)
me = f"writer-{os.getpid()}"

async def main() -> None:
    wins, refused = [], 0
    async with open_backend(url) as store:
        # Connected, and holding the seq both writers will first try to extend.
        seq = (await store.get_run(run_id)).seq
        open(os.path.join(ready, me), "w").close()
        deadline = time.monotonic() + 300  # only so an orphan never spins forever
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit(f"{me}: the start signal {go} never came")
            time.sleep(0.001)
        while True:
            # The first round is a certain collision (both extend the seq they
            # read before the start); then both re-read and race freely.
            if seq >= int(target):
                break
            event = TransitionEvent(seq=seq + 1, state=RunState.MODEL_CALL, trigger=me)
            try:
                await store.append(run_id, [event], expected_seq=seq, lease=lease)
                wins.append(seq + 1)
            except ConcurrentUpdateError:
                refused += 1
            seq = (await store.get_run(run_id)).seq
    print(json.dumps({"me": me, "wins": wins, "refused": refused}))

asyncio.run(main())
"""


def race(url: str, lease: str, where: Path) -> list[dict[str, Any]]:
    """Start two writers, release them together once both are ready, return their reports."""
    ready, go = where / "ready", where / "go"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, "race", lease, str(ready), str(go), str(TARGET)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        wait_for_entries(
            ready,
            2,
            awaiting="both writers to have read seq 1 and wait at the gate",
            processes=procs,
        )
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def _urls() -> dict[str, Callable[[Path, pytest.FixtureRequest], str]]:
    def redis(where: Path, request: pytest.FixtureRequest) -> str:
        base: str = request.getfixturevalue("redis_url")
        return f"{base}?prefix=race-{uuid.uuid4().hex[:10]}:"

    def postgres(where: Path, request: pytest.FixtureRequest) -> str:
        schema: str = request.getfixturevalue("pg_schema")
        return f"{postgres_server.URL}?schema={schema}"

    return {
        "postgres": postgres,
        "sqlite": lambda where, _: f"sqlite:///{where / 'runs.db'}",
        "jsonfile": lambda where, _: f"file://{where / 'runs'}",
        "redis": redis,
    }


@pytest.mark.parametrize("kind", sorted(_urls()))
def test_two_processes_appending_to_one_run_win_each_seq_exactly_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = _urls()[kind](tmp_path, request)

    async def setup() -> str:
        async with open_backend(url) as store:
            lease = await new_run(store, "race")
            return lease.model_dump_json()

    results = race(url, run(setup()), tmp_path)

    wins = [set(r["wins"]) for r in results]
    assert not wins[0] & wins[1], "a seq was won by both writers"
    assert wins[0] | wins[1] == set(range(2, TARGET + 1)), "a seq was won by neither"
    assert sum(r["refused"] for r in results) > 0, f"the writers never collided: {results}"

    async def check() -> None:
        async with open_backend(url) as store:
            loaded = await store.load_run("race")
        assert [e.seq for e in loaded.events] == list(range(1, TARGET + 1))
        owners = {seq: r["me"] for r in results for seq in r["wins"]}
        for event in loaded.events[1:]:
            assert isinstance(event, TransitionEvent)
            assert event.trigger == owners[event.seq], f"seq {event.seq} is not its winner's"

    run(check())
