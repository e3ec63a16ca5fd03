"""``runs prune`` on 10,000 finished runs: all go, quickly, and the SQLite file shrinks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import (
    AssistantMessage,
    CreatedEvent,
    ModelResponseEvent,
    RunHeader,
    TransitionEvent,
    UserMessage,
)
from tests.cli.conftest import run_cli

RUNS = 10_000


def _finished_runs(path: Path, count: int) -> None:
    """``count`` DONE runs of three events each (~1 KB per run on disk)."""

    async def make() -> None:
        # synchronous=OFF and concurrent creates (group commit): the setup takes ~0.5 s.
        async with SqliteBackend(path, synchronous="OFF") as db:

            async def one(i: int) -> None:
                events = [
                    CreatedEvent(
                        seq=1,
                        state=RunState.PENDING,
                        messages=(UserMessage(content="What is 7 + 7? " * 5),),
                    ),
                    TransitionEvent(seq=2, state=RunState.MODEL_CALL, trigger="start"),
                    ModelResponseEvent(
                        seq=3,
                        state=RunState.DONE,
                        trigger="final_answer",
                        message=AssistantMessage(content="14 " * 20),
                        model="scripted",
                    ),
                ]
                header = RunHeader(run_id=f"run-{i:05d}", state=RunState.DONE, seq=3)
                await db.create_run(header, events)

            for start in range(0, count, 1000):
                await asyncio.gather(*(one(i) for i in range(start, min(count, start + 1000))))

    asyncio.run(make())


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict[str, object], float]:
    """Prune a store of 10,000 DONE runs through the CLI: (file, size before, report, seconds)."""
    path = tmp_path_factory.mktemp("large") / "runs.db"
    _finished_runs(path, RUNS)
    before = path.stat().st_size
    url = f"sqlite:///{path}"
    started = time.perf_counter()
    done = run_cli("runs", "prune", "--older-than", "0s", "--json", db=url)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    return path, before, json.loads(done.stdout), seconds


def test_prune_removes_10000_finished_runs(
    pruned: tuple[Path, int, dict[str, object], float],
) -> None:
    path, _, report, seconds = pruned
    assert report["runs"] == RUNS
    # Measured here: the prune itself 0.16 s, the whole command 0.4 s. The bound
    # catches a prune that is quadratic in the runs, not a slow (loaded) machine;
    # benchmarks/ measures the speed.
    assert seconds < 120, f"pruning {RUNS} runs took {seconds:.1f} s"
    listing = run_cli("runs", "list", "--json", db=f"sqlite:///{path}")
    assert json.loads(listing.stdout)["runs"] == []


def test_prune_of_10000_runs_shrinks_the_file(
    pruned: tuple[Path, int, dict[str, object], float],
) -> None:
    path, before, _, _ = pruned
    after = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + "-*"))
    assert after < before / 10, f"{before:,} B before the prune, {after:,} B after"
