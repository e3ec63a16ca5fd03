"""(b) Many concurrent runs on one event loop, one Agent, one SQLite store, vs the floor.

N runs (1,000; 200 with --quick) of 10 tool turns each are started together
with ``asyncio.gather(*(agent.do_async(...)))`` on `SqliteBackend`
(synchronous=FULL), whose group commit lets concurrent appends share a commit.
The same workload also runs on the *same-work floor* (`floor_concurrency.py`):
the engine's durable work - the same appends, events and JSON bytes, one
writer batching pending appends into one commit, each run awaiting its commit
before its next effect - with no framework; plain, and with validated pydantic
records.

Every measurement is a fresh interpreter (so one's garbage and GC state never
reach the next), and the configurations alternate within each of >= 5 rounds;
the table gives medians. Per measurement: process CPU per transition (all
threads: ``time.process_time``), transitions/s, and the CPU time the cyclic
garbage collector ran (``gc.callbacks``, its thread's ``time.thread_time``).

* zero-latency model, default GC: engine CPU / floor CPU per transition.
* zero-latency model, the GC settings of docs/performance.md (``gc.freeze()``
  after start-up, gen-0 threshold raised to ``TUNED_THRESHOLD``), on both.
* 50 ms model (``ScriptedModel(delay=0.05)``): engine wall / floor wall.
* two engine processes on one SQLite file vs one process: transitions/s.

Tools are async, so no worker-thread hop is measured.

Run alone: ``python benchmarks/bench_concurrency.py [--quick] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    Row,
    count_transitions,
    gated,
    info,
    machine_summary,
    median,
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
ROUNDS = 5
TARGET_CPU_RATIO = 2.4
"""Engine CPU per transition / the floor's, default GC."""
TARGET_CPU_RATIO_TUNED = 2.0
"""The same with the GC settings of docs/performance.md on both."""
TARGET_TPS = 15_000
TARGET_WALL_RATIO = 1.5
"""Engine wall / floor wall with a 50 ms model."""
TARGET_TWO_PROCESSES = 1.9
TUNED_THRESHOLD = (50_000, 20, 20)
"""``gc.set_threshold`` of the tuned runs (the default is 700, 10, 10)."""


async def lookup(key: int) -> str:
    """A trivial async tool."""
    return f"value-{key}"


def make_agent(backend: Backend, delay: float) -> Agent:
    script: list[str | ToolCall] = [ToolCall("lookup", {"key": i}) for i in range(TURNS)]
    script.append("done")
    return Agent(ScriptedModel(script, delay=delay), db=backend, retry=1, tools=[lookup])


# -- one measurement, in a child process ---------------------------------------------------


class GcClock:
    """CPU time the cyclic collector runs, from ``gc.callbacks``.

    The collector runs in the thread whose allocation triggered it, with the
    GIL, from its ``start`` callback to its ``stop`` callback in that thread, so
    that thread's CPU clock times it: wall time would count the time other
    programs (or this process's other threads) kept it off a CPU.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started
            self.collections += 1


@dataclass
class Measured:
    wall: float = 0.0
    cpu: float = 0.0
    gc_seconds: float = 0.0
    gc_collections: int = 0
    started: float = 0.0
    """``time.perf_counter()`` at the start (CLOCK_MONOTONIC: comparable across processes)."""
    ended: float = 0.0


@contextlib.contextmanager
def measuring(into: Measured) -> Iterator[None]:
    clock = GcClock()
    gc.callbacks.append(clock)
    cpu = time.process_time()
    into.started = time.perf_counter()
    try:
        yield
    finally:
        into.ended = time.perf_counter()
        into.cpu = time.process_time() - cpu
        into.wall = into.ended - into.started
        gc.callbacks.remove(clock)
        into.gc_seconds, into.gc_collections = clock.seconds, clock.collections


def tune_gc(tuned: bool) -> None:
    """Start-up is over: collect once, then (tuned) freeze what is left and raise gen 0."""
    gc.collect()
    if tuned:
        gc.freeze()
        gc.set_threshold(*TUNED_THRESHOLD)


def wait_for_go() -> None:
    """Two-process mode: say ready on stdout, start when the parent writes a line."""
    print("ready", flush=True)
    sys.stdin.readline()


async def engine_child(
    path: Path, runs: int, delay: float, tuned: bool, barrier: bool
) -> dict[str, Any]:
    backend = open_sqlite(path)
    try:
        agent = make_agent(backend, delay)
        await agent.do_async(Task("warm-up"))
        commits = _commits(backend)
        tune_gc(tuned)
        if barrier:
            wait_for_go()
        got = Measured()
        with measuring(got):
            outputs = await asyncio.gather(
                *(agent.do_async(Task(f"task {i}"), return_output=True) for i in range(runs))
            )
        assert all(o.output == "done" for o in outputs)
        transitions = 0
        for output in outputs:
            transitions += count_transitions(await backend.load_run(output.run_id))
        after = _commits(backend)
        return {**vars(got), "transitions": transitions,
                "commits": None if commits is None or after is None else after - commits}
    finally:
        await backend.close()


def floor_child(path: Path, runs: int, delay: float, tuned: bool, pydantic: bool) -> dict[str, Any]:
    from floor_concurrency import capture_workload, run_floor

    workload = capture_workload(make_agent)
    tune_gc(tuned)
    got = Measured()
    result = asyncio.run(
        run_floor(path, workload, runs, delay, pydantic=pydantic,
                  measured=functools.partial(measuring, got))
    )
    return {**vars(got), "transitions": result.transitions, "commits": result.commits}


def _commits(backend: Backend) -> int | None:
    """SqliteBackend's count of commits so far (an internal counter), or None."""
    stats = getattr(backend, "_stats", None)
    commits = getattr(stats, "commits", None)
    return commits if isinstance(commits, int) else None


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True, choices=("engine", "floor", "floor-pydantic"))
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--barrier", action="store_true")
    args = parser.parse_args(argv)
    if args.child == "engine":
        result = asyncio.run(
            engine_child(args.db, args.runs, args.delay, args.tuned, args.barrier)
        )
    else:
        result = floor_child(args.db, args.runs, args.delay, args.tuned,
                             args.child == "floor-pydantic")
    print(json.dumps(result), flush=True)


# -- the parent: alternated rounds ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    gc_seconds: float
    gc_collections: int
    transitions: int
    commits: int | None
    started: float
    ended: float

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.transitions * 1e6

    @property
    def gc_us(self) -> float:
        return self.gc_seconds / self.transitions * 1e6

    @property
    def tps(self) -> float:
        return self.transitions / self.wall


def _command(kind: str, db: Path, runs: int, delay: float, tuned: bool, barrier: bool) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--db", str(db),
               "--runs", str(runs), "--delay", str(delay)]
    if tuned:
        command.append("--tuned")
    if barrier:
        command.append("--barrier")
    return command


def _sample(line: str) -> Sample:
    return Sample(**json.loads(line))


def measure(kind: str, runs: int, delay: float, *, tuned: bool = False) -> Sample:
    with scratch_dir() as tmp:
        done = subprocess.run(
            _command(kind, tmp / "concurrent.db", runs, delay, tuned, False),
            check=True, capture_output=True, text=True, env=_child_env(),
        )
    return _sample(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True, slots=True)
class Processes:
    """``count`` engine processes started together on one SQLite file."""

    tps: float
    cpu_us: float
    """Process CPU (all threads, all processes) per transition."""
    cores: float
    """CPU-seconds per wall second: the cores the processes kept busy."""
    load: float
    """The 1-minute load average when they ended (other programs competing for the CPUs)."""


def measure_processes(count: int, runs: int) -> Processes:
    """Transitions/s and CPU of ``count`` engine processes started together on one SQLite file."""
    with scratch_dir() as tmp:
        db = tmp / "shared.db"
        children = [
            subprocess.Popen(_command("engine", db, runs, 0.0, False, True), env=_child_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(count)
        ]
        try:
            for child in children:  # the barrier: every child has warmed up
                assert child.stdout is not None
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a benchmark child died before it was ready")
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            samples = []
            for child in children:
                out, _ = child.communicate(timeout=600)
                if child.returncode != 0:
                    raise RuntimeError(f"a benchmark child exited with {child.returncode}")
                samples.append(_sample(out.strip().splitlines()[-1]))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    wall = max(s.ended for s in samples) - min(s.started for s in samples)
    transitions = sum(s.transitions for s in samples)
    cpu = sum(s.cpu for s in samples)
    return Processes(transitions / wall, cpu / transitions * 1e6, cpu / wall, os.getloadavg()[0])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


CONFIGS: tuple[tuple[str, str, float, bool], ...] = (
    ("engine", "engine", 0.0, False),
    ("floor", "floor", 0.0, False),
    ("floor-pydantic", "floor-pydantic", 0.0, False),
    ("engine tuned", "engine", 0.0, True),
    ("floor tuned", "floor", 0.0, True),
    ("engine 50ms", "engine", DELAY, False),
    ("floor 50ms", "floor", DELAY, False),
)


def rounds(
    runs: int, count: int
) -> tuple[dict[str, list[Sample]], list[Processes], list[Processes]]:
    """``count`` rounds of every configuration; the order flips each round."""
    samples: dict[str, list[Sample]] = {label: [] for label, *_ in CONFIGS}
    one: list[Processes] = []
    two: list[Processes] = []
    for index in range(count):
        order = CONFIGS if index % 2 == 0 else tuple(reversed(CONFIGS))
        for label, kind, delay, tuned in order:
            samples[label].append(measure(kind, runs, delay, tuned=tuned))
        if index % 2 == 0:
            one.append(measure_processes(1, runs))
            two.append(measure_processes(2, runs))
        else:
            two.append(measure_processes(2, runs))
            one.append(measure_processes(1, runs))
    return samples, one, two


def run(quick: bool) -> list[Row]:
    runs = 200 if quick else 1000
    samples, one, two = rounds(runs, ROUNDS)

    def med(label: str, attr: str) -> float:
        return median([getattr(s, attr) for s in samples[label]])

    def ratio(top: str, bottom: str, attr: str) -> float:
        return median([getattr(a, attr) / getattr(b, attr)
                       for a, b in zip(samples[top], samples[bottom], strict=True)])

    rows = [info(NAME, f"{runs} runs x {TURNS} tool turns, medians of {ROUNDS} alternated rounds,"
                 " a fresh process each", f"{samples['engine'][0].transitions:,} transitions")]
    for label in ("engine", "floor", "floor-pydantic", "engine tuned", "floor tuned"):
        rows.append(info(
            NAME, f"  {label}: CPU / transition; GC / transition; transitions / s",
            f"{med(label, 'cpu_us'):.0f} us; {med(label, 'gc_us'):.1f} us; "
            f"{med(label, 'tps'):,.0f}",
        ))
    engine = samples["engine"]
    if engine[0].commits:
        writes = runs * (TURNS * 2 + 1)
        rows.append(info(NAME, "  engine group commit",
                         f"{median([s.commits or 0 for s in engine]):,.0f} commits, "
                         f"{writes / median([s.commits or 1 for s in engine]):.1f} appends/commit"))
    rows += [
        gated(NAME, "  engine CPU / floor CPU per transition (default GC)",
              ratio("engine", "floor", "cpu_us"), "x", TARGET_CPU_RATIO, ".2f"),
        info(NAME, "  engine CPU / floor-pydantic CPU",
             f"{ratio('engine', 'floor-pydantic', 'cpu_us'):.2f}x"),
        gated(NAME, "  engine CPU / floor CPU, both with the documented GC settings",
              ratio("engine tuned", "floor tuned", "cpu_us"), "x", TARGET_CPU_RATIO_TUNED, ".2f"),
        info(NAME, "  engine tuned CPU / floor CPU (default GC)",
             f"{ratio('engine tuned', 'floor', 'cpu_us'):.2f}x"),
        Row(NAME, "  engine transitions / s (default GC)", f"{med('engine', 'tps'):,.0f}",
            f">= {TARGET_TPS:,}", med("engine", "tps") >= TARGET_TPS),
        info(NAME, f"{DELAY * 1e3:.0f} ms model: engine wall; floor wall",
             f"{med('engine 50ms', 'wall'):.2f} s; {med('floor 50ms', 'wall'):.2f} s "
             f"(ideal {(TURNS + 1) * DELAY:.2f} s)"),
        gated(NAME, "  engine wall / floor wall", ratio("engine 50ms", "floor 50ms", "wall"),
              "x", TARGET_WALL_RATIO, ".2f"),
        info(NAME, "engine, one process; two processes on one file: transitions / s",
             f"{median([p.tps for p in one]):,.0f}; {median([p.tps for p in two]):,.0f}"),
        info(NAME, "  one process: CPU / transition; cores kept busy",
             f"{median([p.cpu_us for p in one]):.0f} us; {median([p.cores for p in one]):.2f}"),
        info(NAME, "  two processes: CPU / transition; cores kept busy; load average",
             f"{median([p.cpu_us for p in two]):.0f} us; {median([p.cores for p in two]):.2f}; "
             f"{median([p.load for p in two]):.1f}"),
    ]
    # Two processes can at best keep every CPU busy: with one process keeping
    # `cores` busy, their ratio cannot pass cpus / cores (and less when other
    # programs compete: see the load average).
    cpus = os.cpu_count() or 1
    rows.append(info(NAME, f"  ceiling on {cpus} idle CPUs: {cpus} / cores one process keeps busy",
                     f"{min(2.0, cpus / median([p.cores for p in one])):.2f}x"))
    scale = median([b.tps / a.tps for a, b in zip(one, two, strict=True)])
    rows.append(Row(NAME, "  two processes / one process", f"{scale:.2f}x",
                    f">= {TARGET_TWO_PROCESSES:.1f}x", scale >= TARGET_TWO_PROCESSES))
    return rows


def profile(quick: bool) -> None:
    runs = 200 if quick else 1000
    for delay in (0.0, DELAY):
        def once(delay: float = delay) -> None:
            with scratch_dir() as tmp:
                asyncio.run(engine_child(tmp / "profile.db", runs, delay, False, False))
        profile_call(f"{runs} concurrent runs x {TURNS} turns, model delay {delay * 1e3:.0f} ms",
                     once)


def main() -> None:
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
        return
    options = parse_options(__doc__ or NAME)
    print(machine_summary())
    print_table(run(options.quick))
    if options.profile:
        profile(options.quick)


if __name__ == "__main__":
    main()
