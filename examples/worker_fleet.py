"""A fleet of workers on one SQLite file: submit runs, SIGKILL a worker, every run finishes.

Goal: show that the store is the queue. This script submits 12 runs
(`Agent.submit_async` stores them PENDING, nothing runs yet), starts three
``durable-agent worker`` processes on the same SQLite file, and SIGKILLs the
first one while its tool calls are in flight. The other two take its runs
over (its leases belong to a dead process on this host) and every run
finishes. Each tool call writes its effect under its idempotency key, and
every attempt is counted: the table at the end shows the few calls that ran
twice (they were in flight at the kill: at-least-once) and that no effect was
recorded twice.

Offline: a scripted model, no API key. Run with: python examples/worker_fleet.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from durable_agent import Agent, RunState, ScriptedModel, ToolCall, ToolContext, tool
from durable_agent.backends.memory import MemoryBackend

RUNS = 12
WORKERS = 3
DEADLINE = 90.0


def _effects() -> sqlite3.Connection:
    conn = sqlite3.connect(Path(os.environ["FLEET_DIR"]) / "effects.db", timeout=30)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, run_id TEXT)")
    conn.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT, run_id TEXT, pid INTEGER)")
    return conn


def _record(table: str, key: str, run_id: str) -> None:
    with closing(_effects()) as conn, conn:
        if table == "attempts":
            conn.execute("INSERT INTO attempts VALUES (?, ?, ?)", (key, run_id, os.getpid()))
        else:  # the unique key: a second recorded effect is refused
            conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, run_id))


@tool
async def ship(parcel: int, ctx: ToolContext) -> str:
    """Ship a parcel: an outside effect, made exactly-once by the idempotency key."""
    await asyncio.to_thread(_record, "attempts", ctx.idempotency_key, ctx.run_id)
    await asyncio.sleep(0.3)  # the parcel service takes a while
    await asyncio.to_thread(_record, "effects", ctx.idempotency_key, ctx.run_id)
    return f"parcel {parcel} shipped"


agent = Agent(
    ScriptedModel([ToolCall("ship", {"parcel": 1}), ToolCall("ship", {"parcel": 2}), "shipped"]),
    db=MemoryBackend(),  # the workers pass --db: this agent only names the model and tools
    tools=[ship],
    name="shipping",
)
"""What the workers run: ``durable-agent worker --agent worker_fleet:agent``."""


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def _attempts(pid: int | None = None) -> int:
    with closing(_effects()) as conn:
        if pid is None:
            return int(conn.execute("SELECT count(*) FROM attempts").fetchone()[0])
        query = "SELECT count(*) FROM attempts WHERE pid = ?"
        return int(conn.execute(query, (pid,)).fetchone()[0])


async def _submit(url: str) -> list[str]:
    submitter = Agent(agent.model, db=url, tools=[ship], name="shipping")
    async with submitter:
        return [(await submitter.submit_async(f"ship order {i}")).run_id for i in range(RUNS)]


async def _finished(url: str, run_ids: list[str]) -> list[object]:
    waiter = Agent(agent.model, db=url, tools=[ship], name="shipping")
    async with waiter:
        return [await waiter.wait_run_async(r, timeout=DEADLINE) for r in run_ids]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="worker-fleet-"))
    os.environ["FLEET_DIR"] = str(folder)
    # Create the effects tables before any worker starts: two workers creating them at once
    # can make SQLite refuse one at once ("database is locked"), failing that tool call.
    _effects().close()
    url = f"sqlite:///{folder / 'runs.db'}"
    run_ids = asyncio.run(_submit(url))
    print(f"submitted {len(run_ids)} runs to {url}: PENDING, nothing runs yet")

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    logs = [open(folder / f"worker-{i}.log", "wb") for i in range(WORKERS)]  # noqa: SIM115
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "durable_agent", "worker", "--db", url,
             "--agent", "worker_fleet:agent", "--concurrency", "3"],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
        for log in logs
    ]
    victim = workers[0]
    _wait(lambda: _attempts(victim.pid) >= 2, "the first worker's tool calls")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    print(f"SIGKILLed worker {victim.pid} with tool calls in flight")

    outputs = asyncio.run(_finished(url, run_ids))
    for proc in workers[1:]:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE)
    for log in logs:
        log.close()

    with closing(_effects()) as conn:
        tried = dict(conn.execute("SELECT run_id, count(*) FROM attempts GROUP BY run_id"))
        recorded = dict(conn.execute("SELECT run_id, count(*) FROM effects GROUP BY run_id"))
    print(f"\n{'run':<34}{'state':<8}{'tool runs':>10}{'effects':>9}")
    for run_id, output in zip(run_ids, outputs, strict=True):
        state = output.state  # type: ignore[attr-defined]
        print(f"{run_id:<34}{state.value:<8}{tried.get(run_id, 0):>10}{recorded.get(run_id, 0):>9}")
    takeovers = sum((folder / f"worker-{i}.log").read_text().count("took over") for i in (1, 2))
    reruns = sum(tried.values()) - sum(recorded.values())
    print(
        f"\nall {len(run_ids)} runs DONE: "
        f"{all(o.state is RunState.DONE for o in outputs)}; "  # type: ignore[attr-defined]
        f"{takeovers} taken over from the killed worker; {sum(tried.values())} tool runs for "
        f"{sum(recorded.values())} effects ({reruns} re-run after the kill, same idempotency "
        "key); no effect recorded twice: the key is unique"
    )
    shutil.rmtree(folder, ignore_errors=True)
    if not all(o.state is RunState.DONE for o in outputs):  # type: ignore[attr-defined]
        raise SystemExit(1)
    if any(n != 2 for n in recorded.values()) or len(recorded) != RUNS:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
