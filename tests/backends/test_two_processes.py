"""Two processes appending to one run at once, on every shared backend: exactly one wins
each seq, and no event is lost or duplicated."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from durable_agent.records import TransitionEvent
from durable_agent.registry import open_backend
from tests.backends.conftest import new_run, run

TARGET = 80
"""The seq both writers race to."""

_WRITER = """
import asyncio, json, os, sys, time
from durable_agent.errors import ConcurrentUpdateError
from durable_agent.fsm import RunState
from durable_agent.records import Lease, TransitionEvent
from durable_agent.registry import open_backend

url, run_id, lease_json, go, target = sys.argv[1:6]
lease = Lease.model_validate_json(lease_json)
me = f"writer-{os.getpid()}"

async def main() -> None:
    wins, refused = [], 0
    async with open_backend(url) as store:
        await store.get_run(run_id)  # connected before the start
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit("no go-file within 60 s")
            time.sleep(0.001)
        while True:
            # Both read the store's seq and try to extend it: they collide often.
            seq = (await store.get_run(run_id)).seq
            if seq >= int(target):
                break
            event = TransitionEvent(seq=seq + 1, state=RunState.MODEL_CALL, trigger=me)
            try:
                await store.append(run_id, [event], expected_seq=seq, lease=lease)
                wins.append(seq + 1)
            except ConcurrentUpdateError:
                refused += 1
    print(json.dumps({"me": me, "wins": wins, "refused": refused}))

asyncio.run(main())
"""


def _urls() -> dict[str, Callable[[Path, pytest.FixtureRequest], str]]:
    def redis(where: Path, request: pytest.FixtureRequest) -> str:
        base: str = request.getfixturevalue("redis_url")
        return f"{base}?prefix=race-{uuid.uuid4().hex[:10]}:"

    return {
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

    lease = run(setup())
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, "race", lease, str(go), str(TARGET)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:  # each says when it is connected and waits at the gate
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "a writer never got ready"
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1][-3000:]
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

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
