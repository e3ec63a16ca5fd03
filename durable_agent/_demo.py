"""`durable-agent demo`: a run is SIGKILLed mid-run and resumed in a new process.

The parent process never runs the agent itself. It starts a child process that
runs an offline trip-planning agent (`ScriptedModel`, three tools, one turn
with two parallel calls) on SQLite through a `KillSwitchBackend`, which
SIGKILLs the child right after a chosen durable write. A second, new child
continues the run from the store. The parent then reads the store and the
ledger the tools append to, and prints which events were replayed from the
store and which were executed after the restart, how often each tool really
ran, and the final answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable_agent.agent import Agent, Task
from durable_agent.backend import Backend
from durable_agent.models.scripted import ScriptedModel, ToolCall
from durable_agent.records import (
    CancelledEvent,
    CreatedEvent,
    DecisionEvent,
    Event,
    FailedEvent,
    ModelAttemptFailedEvent,
    ModelResponseEvent,
    OutputRejectedEvent,
    ToolFinishedEvent,
    ToolStartedEvent,
    TransitionEvent,
    UserMessage,
    WaitingEvent,
)
from durable_agent.testing.crash import KillSwitchBackend
from durable_agent.tools import ToolContext

__all__ = ["DEFAULT_KILL_AFTER", "run_child", "run_demo"]

TASK = "Plan 3 nights in Lisbon from Berlin, leaving 2 May, and book the hotel."

TOOL_NAMES = ("search_flights", "search_hotels", "book_hotel")

SCRIPT: tuple[str | ToolCall | list[ToolCall], ...] = (
    [
        ToolCall("search_flights", {"origin": "BER", "destination": "LIS", "date": "2025-05-02"}),
        ToolCall("search_hotels", {"city": "Lisbon", "nights": 3}),
    ],
    ToolCall("book_hotel", {"hotel": "Casa do Rio", "nights": 3}),
    "Booked: flight TP 531 BER->LIS on 2 May at 07:10 (EUR 189) and 3 nights at "
    "Casa do Rio (EUR 423). Total EUR 612.",
)

DEFAULT_KILL_AFTER = 3
"""Write 3 stores the flight result while the slower hotel search is still in flight.

Writes of an uninterrupted run: 1 create with start, 2 the model's two calls with
their intents, 3 the flight result, 4 the hotel result with tools_done, 5 the
booking call with its intent, 6 the booking result with tools_done, 7 the final
answer.
"""

UNINTERRUPTED_WRITES = 7

HOTEL_SEARCH_SECONDS = 2.0
"""The first hotel search is slow: the flight result is durable and the child killed
long before it ends, even on a loaded machine. A re-run answers at once."""

_CHILD_TIMEOUT = 60.0


# -- the agent (built identically by both child processes) --------------------


def _log_run(ledger: Path, tool: str, ctx: ToolContext) -> None:
    """Append one line per real tool execution; the parent counts them."""
    entry = {"tool": tool, "pid": os.getpid(), "key": ctx.idempotency_key}
    with ledger.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def build_agent(db: Backend, ledger: Path) -> Agent:
    """The demo agent: a scripted model, two searches and a booking tool."""

    async def search_flights(origin: str, destination: str, date: str, ctx: ToolContext) -> str:
        """Find flights from origin to destination on a date (YYYY-MM-DD)."""
        _log_run(ledger, "search_flights", ctx)
        return f"TP 531 {origin}->{destination} {date} 07:10, EUR 189"

    async def search_hotels(city: str, nights: int, ctx: ToolContext) -> str:
        """Find hotels in a city for a number of nights."""
        _log_run(ledger, "search_hotels", ctx)
        # Slow on its first attempt on purpose (a margin, not a race): when the
        # child is killed right after the flight result is durable, this call is
        # in flight. The re-run after the restart answers quickly.
        await asyncio.sleep(HOTEL_SEARCH_SECONDS if ctx.attempt == 1 else 0.05)
        return f"Casa do Rio, {city}: EUR 141/night, {nights} nights EUR {141 * nights}"

    async def book_hotel(hotel: str, nights: int, ctx: ToolContext) -> str:
        """Book a hotel. The idempotency key makes a re-run return the same booking."""
        _log_run(ledger, "book_hotel", ctx)
        code = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:6].upper()
        return f"booked {hotel} for {nights} nights, confirmation HB-{code}"

    return Agent(
        ScriptedModel(list(SCRIPT), name="scripted-trip-planner"),
        db=db,
        retry=1,
        tools=[search_flights, search_hotels, book_hotel],
        system_prompt="You plan trips. Use the tools; book only what the user asked for.",
        name="trip-planner",
    )


async def _child(phase: str, db_path: Path, ledger: Path, run_id: str, kill_after: int) -> None:
    from durable_agent.backends.sqlite import SqliteBackend

    inner = SqliteBackend(db_path)
    if phase == "start":
        async with KillSwitchBackend(inner, kill_after=kill_after) as store:
            await build_agent(store, ledger).do_async(Task(TASK, run_id=run_id))
    else:
        async with inner:
            await build_agent(inner, ledger).continue_run_async(run_id=run_id)


def run_child(phase: str, *, db_path: Path, ledger: Path, run_id: str, kill_after: int) -> int:
    """Entry point of a child process: ``start`` the run (and die), or ``resume`` it."""
    asyncio.run(_child(phase, db_path, ledger, run_id, kill_after))
    return 0


# -- the parent ---------------------------------------------------------------


class DemoError(Exception):
    """The demo could not show what it promises; the message says why."""


@dataclass(frozen=True)
class _Child:
    pid: int
    returncode: int
    stderr: str


def _spawn(phase: str, db_path: Path, ledger: Path, run_id: str, kill_after: int) -> _Child:
    command = [
        sys.executable, "-m", "durable_agent", "demo",
        "--child", phase,
        "--db", str(db_path),
        "--ledger", str(ledger),
        "--run-id", run_id,
        "--kill-after", str(kill_after),
    ]  # fmt: skip
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            _, stderr = process.communicate(timeout=_CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise DemoError(
                f"the {phase} process {process.pid} did not finish within {_CHILD_TIMEOUT:.0f}s"
            ) from None
    return _Child(process.pid, process.returncode, stderr)


async def _load_events(db_path: Path, run_id: str) -> tuple[Event, ...]:
    from durable_agent.backends.sqlite import SqliteBackend

    async with SqliteBackend(db_path) as store:
        return (await store.load_run(run_id)).events


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe(event: Event) -> tuple[str, str]:
    """The event's trigger (or kind when no transition) and a one-line detail."""
    label = event.trigger or event.kind
    match event:
        case CreatedEvent():
            task = next((m.content for m in event.messages if isinstance(m, UserMessage)), "")
            return label, f'task: "{task}"'
        case TransitionEvent():
            details = {
                "start": "intent: the model call may start",
                "tools_done": "every tool result is recorded",
                "resume": "resumed after a recorded failure",
            }
            return label, details.get(label, "")
        case ModelResponseEvent():
            # `repeated`: the run was resumed in MODEL_CALL, so this call may be a second one.
            calls = event.message.tool_calls
            if calls:
                verb = "model asked again" if event.repeated else "model asks"
                return label, f"{verb}: " + ", ".join(c.name for c in calls)
            verb = "model answered again" if event.repeated else "model answers"
            return label, f'{verb}: "{event.message.content or ""}"'
        case ModelAttemptFailedEvent():
            return label, f"model attempt {event.attempt} failed: {event.error.type}"
        case ToolStartedEvent():
            attempt = f", attempt {event.attempt}" if event.attempt > 1 else ""
            return label, f"intent: {event.name} [{event.call_id}]{attempt}"
        case ToolFinishedEvent():
            return label, f"result: {event.result.name} -> {event.result.content}"
        case OutputRejectedEvent():
            return label, f"answer rejected: {event.error.message}"
        case FailedEvent():
            return label, f"failed in {event.failed_state}: {event.error.type}"
        case WaitingEvent():
            return label, "waits for: " + ", ".join(r.id for r in event.requirements)
        case DecisionEvent():
            return label, f"decided {event.requirement_id}: {event.action}"
        case CancelledEvent():
            return label, f"cancelled: {event.reason}"
    return label, ""


def _read_ledger(ledger: Path) -> list[dict[str, Any]]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines() if line]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def run_demo(
    *,
    db_path: Path | None = None,
    keep: bool = False,
    kill_after: int = DEFAULT_KILL_AFTER,
    echo: Callable[[str], None] = print,
    as_json: bool = False,
) -> int:
    """Run the demo and print its report through ``echo``; return the exit status.

    ``db_path`` keeps the database there (it may already hold other runs);
    otherwise it lives in a temporary directory that is deleted unless ``keep``.
    ``as_json`` prints one JSON summary (the run, both processes, the tool
    runs, the answer) instead of the report.
    """
    if as_json:
        report: dict[str, Any] = {}
        _run(db_path=db_path, keep=keep, kill_after=kill_after, echo=lambda _: None,
             summary=report)  # fmt: skip
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    return _run(db_path=db_path, keep=keep, kill_after=kill_after, echo=echo, summary={})


def _run(
    *,
    db_path: Path | None,
    keep: bool,
    kill_after: int,
    echo: Callable[[str], None],
    summary: dict[str, Any],
) -> int:
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="durable-agent-demo-"))
    try:
        db = db_path if db_path is not None else workdir / "demo.db"
        _demo(db, workdir / "tool-ledger.jsonl", kill_after, echo, summary)
    finally:
        if keep:
            echo(f"Kept: {workdir} (tool ledger{'' if db_path else ' and database'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    echo(f"(demo took {time.perf_counter() - started:.1f} s)")
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return 0


def _demo(
    db: Path, ledger: Path, kill_after: int, echo: Callable[[str], None], summary: dict[str, Any]
) -> None:
    run_id = f"trip-{uuid.uuid4().hex[:8]}"
    echo("durable-agent demo: an agent run is killed with SIGKILL mid-run, then resumed")
    echo("in a new process. Offline: a ScriptedModel plays the LLM; no network, no API key.")
    echo("")
    echo(f"  store  {db} (SQLite)")
    echo(f"  run    {run_id}")
    echo(f"  task   {TASK}")
    echo("")

    first = _spawn("start", db, ledger, run_id, kill_after)
    killed = first.returncode == -signal.SIGKILL
    if not killed and first.returncode != 0:
        raise DemoError(f"the first process failed (exit {first.returncode}):\n{first.stderr}")
    stored_before = asyncio.run(_load_events(db, run_id))
    killed_seq = stored_before[-1].seq if stored_before else 0
    echo(f"1. process {first.pid} runs the agent on KillSwitchBackend(kill_after={kill_after})")
    if killed:
        # One durable write can store several events: say which events the writes left.
        writes = "write 1" if kill_after == 1 else f"writes 1-{kill_after}"
        stored = "event 1" if killed_seq == 1 else f"events 1-{killed_seq}"
        echo(f"   -> SIGKILLed right after durable write {kill_after}: {writes} stored {stored}")
    else:
        echo(f"   -> the run made fewer than {kill_after} writes: it finished, nothing was killed")

    second = _spawn("resume", db, ledger, run_id, kill_after)
    if second.returncode != 0:
        raise DemoError(f"the resuming process failed (exit {second.returncode}):\n{second.stderr}")
    events = asyncio.run(_load_events(db, run_id))
    echo(f"2. new process {second.pid} calls agent.continue_run_async(run_id={run_id!r})")
    echo(f"   -> the run is {events[-1].state} after {len(events)} events")
    echo("")

    echo("Timeline of the run's stored events:")
    echo(f"  {'seq':>3}  {'state':<10}  {'event':<13}  {'detail':<46}  origin")
    for event in events:
        if event.seq == killed_seq + 1 and killed:
            echo(f"  {'-' * 26} SIGKILL: process {first.pid} died here {'-' * 26}")
        label, detail = _describe(event)
        origin = "replayed from store" if event.seq <= killed_seq else "executed"
        echo(
            f"  {event.seq:>3}  {event.state:<10}  {label:<13}  {_short(detail, 46):<46}  {origin}"
        )
    echo("  replayed from store = written by the killed process, loaded and not redone;")
    echo("  executed            = performed and written by the new process.")
    echo("")

    before_kill = "before the kill" if killed else "in the first process"
    calls_before = sum(isinstance(e, ModelResponseEvent) for e in events[:killed_seq])
    calls_after = sum(isinstance(e, ModelResponseEvent) for e in events[killed_seq:])
    echo(
        f"Model calls: {calls_before} {before_kill} (replayed, not repeated), "
        f"{calls_after} after the restart."
    )
    echo("Tool runs, as counted by the tools themselves (ledger file):")
    runs = _read_ledger(ledger)
    for name in TOOL_NAMES:
        mine = [r for r in runs if r["tool"] == name]
        before = sum(r["pid"] == first.pid for r in mine)
        after = sum(r["pid"] == second.pid for r in mine)
        keys = {str(r["key"]) for r in mine}
        if before and after:
            why = "in flight at the kill (intent, no result): ran again, at-least-once,"
            why += f"\n  {'':<14}  {'':<6}  with the same idempotency key {keys.pop()}"
            if keys:
                why += " (keys differ!)"
        elif before:
            why = f"{before_kill}; its recorded result was replayed, not re-run"
        elif after:
            why = "after the restart"
        else:
            why = "never called"
        echo(f"  {name:<14}  {_plural(len(mine), 'run'):<6}  {why}")
    echo("")

    final = events[-1]
    if not isinstance(final, ModelResponseEvent) or final.trigger != "final_answer":
        raise DemoError(f"run {run_id} ended in {final.state} instead of DONE")
    echo(f"Final answer: {final.message.content}")
    summary.update(
        run_id=run_id,
        store=str(db),
        killed=killed,
        killed_pid=first.pid,
        killed_after_write=kill_after if killed else None,
        events_before_kill=killed_seq if killed else None,
        resumed_pid=second.pid,
        state=events[-1].state.value,
        events=len(events),
        model_calls={"before_kill": calls_before, "after_restart": calls_after},
        tool_runs={
            name: {
                "before_kill": sum(r["pid"] == first.pid for r in runs if r["tool"] == name),
                "after_restart": sum(r["pid"] == second.pid for r in runs if r["tool"] == name),
            }
            for name in TOOL_NAMES
        },
        answer=final.message.content,
    )
