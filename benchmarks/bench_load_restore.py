"""(d) Loading and restoring a 1,000-event run from SQLite.

A run of 250 tool turns (1,003 events; tool arguments and results of about
100 bytes) is written once. Then, repeatedly, a *fresh* `SqliteBackend` object
is opened on the same (warm, page-cached) file and the time of
``backend.load_run(run_id)`` + ``RunContext.from_stored(stored)`` is taken,
which is what resuming a run in a new process costs after the interpreter and
the modules are loaded. Opening the connection happens inside the first call,
so it is included. Target: median <= 20 ms.

Also reported (no target): the same on a backend whose connection is already
open, and the split between ``load_run`` and ``from_stored``.

Run alone: ``python benchmarks/bench_load_restore.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

from _common import (
    Row,
    gated,
    info,
    median,
    open_sqlite,
    run_script,
    scratch_dir,
)

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.run import RunContext

NAME = "d) load+restore"
TURNS = 250
TARGET_MS = 20.0


async def fetch(doc: str) -> str:
    """A trivial async tool returning ~100 bytes."""
    return (doc * 4)[:100]


async def write_run(path: Path) -> tuple[str, int]:
    script: list[str | ToolCall] = [
        ToolCall("fetch", {"doc": f"document number {i:05d} " * 4}) for i in range(TURNS)
    ]
    script.append("done")
    backend = open_sqlite(path)
    try:
        agent = Agent(ScriptedModel(script), db=backend, retry=1, tools=[fetch])
        output = await agent.do_async(Task("Read every document."), return_output=True)
        return output.run_id, output.history_length
    finally:
        await backend.close()


async def time_fresh(path: Path, run_id: str, events: int) -> tuple[float, float]:
    """(load seconds, restore seconds) on a backend object opened for this call."""
    backend = open_sqlite(path)
    try:
        gc.collect()
        started = time.perf_counter()
        stored = await backend.load_run(run_id)
        loaded = time.perf_counter()
        ctx = RunContext.from_stored(stored)
        restored = time.perf_counter()
    finally:
        await backend.close()
    assert ctx.events == events
    return loaded - started, restored - loaded


async def time_warm(path: Path, run_id: str, repeats: int) -> list[float]:
    """Seconds per load + restore on one backend whose connection is already open."""
    backend = open_sqlite(path)
    try:
        await backend.load_run(run_id)
        samples = []
        for _ in range(repeats):
            gc.collect()
            started = time.perf_counter()
            RunContext.from_stored(await backend.load_run(run_id))
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        await backend.close()


def run(quick: bool) -> list[Row]:
    repeats = 7 if quick else 21
    with scratch_dir() as tmp:
        path = tmp / "load.db"
        run_id, events = asyncio.run(write_run(path))
        asyncio.run(time_fresh(path, run_id, events))  # warm the file and the code
        fresh = [asyncio.run(time_fresh(path, run_id, events)) for _ in range(repeats)]
        warm = asyncio.run(time_warm(path, run_id, repeats))
    total = median([load + restore for load, restore in fresh]) * 1e3
    return [
        gated(
            NAME,
            f"{events}-event run, fresh backend: load_run + from_stored (median of {repeats})",
            total,
            " ms",
            TARGET_MS,
            ".1f",
        ),
        info(NAME, "  load_run only", f"{median([f[0] for f in fresh]) * 1e3:.1f} ms"),
        info(
            NAME, "  RunContext.from_stored only", f"{median([f[1] for f in fresh]) * 1e3:.1f} ms"
        ),
        info(
            NAME,
            "open backend (connection reused): load_run + from_stored",
            f"{median(warm) * 1e3:.1f} ms",
        ),
    ]


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
