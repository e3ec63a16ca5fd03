"""(b) Many concurrent runs on one event loop, one Agent, one SQLite store.

N runs (1,000; 200 with --quick) of 10 tool turns each are started together
with ``asyncio.gather(*(agent.do_async(...)))`` on `SqliteBackend`
(synchronous=FULL), whose group commit lets concurrent appends share a commit.

* zero-latency model: state transitions per second (throughput of engine +
  store; informational).
* 50 ms model latency (``ScriptedModel(delay=0.05)``): wall time against the
  ideal, 11 model calls x 50 ms = 0.55 s, since every run waits on its model
  concurrently. Target: wall <= 1.3x ideal.

Tools are async, so no worker-thread hop is measured.

Run alone: ``python benchmarks/bench_concurrency.py [--quick] [--profile]``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    BackendTimer,
    Row,
    count_transitions,
    gated,
    info,
    machine_summary,
    open_sqlite,
    parse_options,
    print_table,
    profile_call,
    scratch_dir,
)

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend

NAME = "b) concurrency"
TURNS = 10
DELAY = 0.05
TARGET_SLOWDOWN = 1.3


async def lookup(key: int) -> str:
    """A trivial async tool."""
    return f"value-{key}"


def make_agent(backend: Backend, delay: float) -> Agent:
    script: list[str | ToolCall] = [ToolCall("lookup", {"key": i}) for i in range(TURNS)]
    script.append("done")
    return Agent(ScriptedModel(script, delay=delay), db=backend, retry=1, tools=[lookup])


@dataclass(frozen=True, slots=True)
class Sample:
    runs: int
    wall: float
    cpu: float
    """Process CPU seconds (all threads) during the runs."""
    transitions: int
    appends: int
    writes: int
    append_seconds: float
    commits: int | None
    """Commits the store made (from SqliteBackend's internal counters, when it has them)."""


async def concurrent_runs(path: Path, runs: int, delay: float) -> Sample:
    backend = open_sqlite(path)
    try:
        agent = make_agent(backend, delay)
        await agent.do_async(Task("warm-up"))
        timer = BackendTimer(backend)
        commits_before = _commits(backend)
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        outputs = await asyncio.gather(
            *(agent.do_async(Task(f"task {i}"), return_output=True) for i in range(runs))
        )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        commits_after = _commits(backend)
        assert all(o.output == "done" for o in outputs)
        transitions = 0
        for output in outputs:
            transitions += count_transitions(await backend.load_run(output.run_id))
        return Sample(
            runs=runs,
            wall=wall,
            cpu=cpu,
            transitions=transitions,
            appends=timer.calls["append"],
            writes=timer.write_calls,
            append_seconds=timer.seconds["append"],
            commits=(
                commits_after - commits_before
                if commits_after is not None and commits_before is not None
                else None
            ),
        )
    finally:
        await backend.close()


def _commits(backend: Backend) -> int | None:
    """SqliteBackend's count of commits so far (an internal counter), or None."""
    stats = getattr(backend, "_stats", None)
    commits = getattr(stats, "commits", None)
    return commits if isinstance(commits, int) else None


def _per_commit(sample: Sample) -> str:
    if not sample.commits:
        return "n/a"
    return f"{sample.commits:,} commits, {sample.writes / sample.commits:.1f} writes/commit"


def measure(runs: int, delay: float) -> Sample:
    with scratch_dir() as tmp:
        return asyncio.run(concurrent_runs(tmp / "concurrent.db", runs, delay))


def run(quick: bool) -> list[Row]:
    runs = 200 if quick else 1000
    fast = measure(runs, 0.0)
    slow = measure(runs, DELAY)
    ideal = (TURNS + 1) * DELAY
    return [
        info(
            NAME,
            f"{runs} runs x {TURNS} tool turns, zero-latency model: wall",
            f"{fast.wall:.2f} s",
        ),
        info(NAME, "  transitions / s", f"{fast.transitions / fast.wall:,.0f}"),
        info(
            NAME,
            "  wall / transition; process CPU / transition",
            f"{fast.wall / fast.transitions * 1e6:.0f} us; "
            f"{fast.cpu / fast.transitions * 1e6:.0f} us",
        ),
        info(NAME, "  appends / s", f"{fast.appends / fast.wall:,.0f}"),
        info(
            NAME,
            "  mean wait inside backend.append",
            f"{fast.append_seconds / fast.appends * 1e3:.1f} ms",
        ),
        info(NAME, "  group commit", _per_commit(fast)),
        info(
            NAME,
            f"{runs} runs x {TURNS} tool turns, {DELAY * 1e3:.0f} ms model: wall",
            f"{slow.wall:.2f} s (ideal {ideal:.2f} s)",
        ),
        gated(NAME, "  wall / ideal", slow.wall / ideal, "x", TARGET_SLOWDOWN, ".2f"),
        info(
            NAME,
            f"  CPU the target leaves per transition ({slow.transitions:,} transitions)",
            f"{(TARGET_SLOWDOWN - 1) * ideal / slow.transitions * 1e6:.1f} us",
        ),
        info(
            NAME,
            "  mean wait inside backend.append",
            f"{slow.append_seconds / slow.appends * 1e3:.1f} ms",
        ),
        info(NAME, "  group commit", _per_commit(slow)),
    ]


def profile(quick: bool) -> None:
    runs = 200 if quick else 1000
    for delay in (0.0, DELAY):
        profile_call(
            f"{runs} concurrent runs x {TURNS} turns, model delay {delay * 1e3:.0f} ms",
            functools.partial(measure, runs, delay),
        )


def main() -> None:
    options = parse_options(__doc__ or NAME)
    print(machine_summary())
    print_table(run(options.quick))
    if options.profile:
        profile(options.quick)


if __name__ == "__main__":
    main()
