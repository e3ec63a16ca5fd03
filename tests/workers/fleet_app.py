"""The application the worker tests run in child processes: agents, a tool with effects.

``FLEET_DIR`` (environment) is the test's folder. The tool ``effect`` writes
its effect to ``effects.db`` under a unique idempotency key (a second write of
one key is refused by the table, so a duplicate *recorded* effect is
impossible to miss) and logs every attempt, with the process that made it.
While ``FLEET_DIR/gate`` exists it holds each call open after logging the
attempt, so a test can kill or stop a worker with calls in flight; a marker
in ``FLEET_DIR/started/`` says the call got there, and one in
``FLEET_DIR/inside/`` that it is there now. That marker is written once the
call's connection to ``effects.db`` is closed: a worker stopped while closing
it (SQLite checkpoints the WAL on the last close, under an exclusive lock)
would hold every other worker's tool at that lock until it resumed. It also keeps the calls in
flight per process in a table, and the highest counts seen, for the slot and
``max_running`` tests.

Run as a script it submits or waits (one process each):

    python -m tests.workers.fleet_app submit DB_URL N [QUEUE]   # prints the run ids
    python -m tests.workers.fleet_app wait DB_URL RUN_ID...     # prints "id state output"
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from durable_agent import Agent, ScriptedModel, ToolCall, ToolContext, tool
from durable_agent.backends.memory import MemoryBackend

TOOL_CALLS = 2
"""Tool calls per run, one per model turn, then the final answer."""


def _dir() -> Path:
    return Path(os.environ["FLEET_DIR"])


def _who() -> str:
    return os.environ.get("FLEET_WORKER") or str(os.getpid())


def create_effects_db(folder: Path) -> None:
    """Create the effects tables once, before any child starts.

    Creating them in each child raced: two connections upgrading from a schema read to a
    write make SQLite refuse one at once ("database is locked") without waiting out the
    busy timeout, and the tool that hit it failed its run.
    """
    with sqlite3.connect(folder / "effects.db", isolation_level=None) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, run_id TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT, run_id TEXT, who TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS live (key TEXT PRIMARY KEY, who TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS peaks (who TEXT, mine INTEGER, fleet INTEGER)")


def effects_db() -> sqlite3.Connection:
    """The effects tables, shared by every process of one test (see create_effects_db)."""
    return sqlite3.connect(_dir() / "effects.db", timeout=60, isolation_level=None)


def _enter(key: str, run_id: str) -> None:
    with closing(effects_db()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        who = _who()
        conn.execute("INSERT INTO attempts VALUES (?, ?, ?)", (key, run_id, who))
        conn.execute("INSERT OR REPLACE INTO live VALUES (?, ?)", (key, who))
        mine = conn.execute("SELECT count(*) FROM live WHERE who = ?", (who,)).fetchone()
        fleet = conn.execute("SELECT count(*) FROM live").fetchone()
        conn.execute("INSERT INTO peaks VALUES (?, ?, ?)", (who, mine[0], fleet[0]))
        conn.execute("COMMIT")


def _leave(key: str, run_id: str) -> None:
    with closing(effects_db()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        # The unique key refuses a second recorded effect; OR IGNORE keeps the
        # at-least-once re-run (same key) from failing the tool.
        conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, run_id))
        conn.execute("DELETE FROM live WHERE key = ?", (key,))
        conn.execute("COMMIT")


@tool
async def effect(n: int, ctx: ToolContext) -> str:
    """Write effect ``n`` of this run, once, under the call's idempotency key."""
    await asyncio.to_thread(_enter, ctx.idempotency_key, ctx.run_id)
    name = f"{ctx.run_id}-{n}-{_who()}"
    for folder in ("started", "inside"):
        (_dir() / folder).mkdir(exist_ok=True)
        (_dir() / folder / name).touch()
    while (_dir() / "gate").exists():  # noqa: ASYNC110 - held open by another process
        await asyncio.sleep(0.01)
    (_dir() / "inside" / name).unlink()
    await asyncio.to_thread(_leave, ctx.idempotency_key, ctx.run_id)
    return f"effect {n} done"


def _script() -> list[str | ToolCall]:
    return [*(ToolCall("effect", {"n": n}) for n in range(TOOL_CALLS)), "all done"]


fleet = Agent(
    ScriptedModel(_script()),
    db=MemoryBackend(),
    tools=[effect],
    name="fleet",
    lease_ttl=float(os.environ.get("FLEET_LEASE_TTL", "30")),
)
"""The agent the workers serve (its own store is unused: workers pass --db)."""

other = Agent(ScriptedModel(["never"]), db=fleet.db, name="someone-else")
"""An agent no worker of these tests serves."""


async def _submit(url: str, count: int, queue: str, priority: int) -> None:
    agent = Agent(fleet.model, db=url, tools=[effect], name="fleet")
    async with agent:
        for _ in range(count):
            handle = await agent.submit_async("go", queue=queue, priority=priority)
            print(handle.run_id, flush=True)


async def _wait(url: str, run_ids: list[str]) -> None:
    agent = Agent(fleet.model, db=url, tools=[effect], name="fleet")
    async with agent:
        for run_id in run_ids:
            output = await agent.wait_run_async(run_id, timeout=120)
            print(run_id, output.state.value, output.output, flush=True)


if __name__ == "__main__":
    command, url, *rest = sys.argv[1:]
    if command == "submit":
        queue = rest[1] if len(rest) > 1 else "default"
        asyncio.run(_submit(url, int(rest[0]), queue, int(rest[2]) if len(rest) > 2 else 0))
    else:
        asyncio.run(_wait(url, rest))
