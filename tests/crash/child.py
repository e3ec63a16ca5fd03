"""One process of a crash test: start or continue a run, maybe dying on the way.

Run as ``python tests/crash/child.py '<json>'`` (see `ChildArgs`). It drives
the run `SCRIPT` describes (three tool turns, the second with two parallel
calls, then a final answer) on the store its URL names (SQLite, Redis or JSON
files, opened with `open_backend`) wrapped in a
`KillSwitchBackend`, and prints one JSON line (`ChildResult`) unless it is
killed first.

Effects that must survive a SIGKILL are counted in ledger files, one JSON line
per effect, appended with ``O_APPEND`` and fsynced before the effect returns:

* every real tool execution (``"kind": "tool"``: call id, city, idempotency
  key, attempt, pid);
* every model request (``"kind": "model"``: the turn asked for, pid).

Ways to die (all SIGKILL of this process, nothing is cleaned up):

* ``kill_after=k``: right after durable write number k (`KillSwitchBackend`);
* ``kill_in_tool=city``: inside that tool call, after its effect is in the
  ledger and before it returns (between the intent and the result);
* ``kill_in_model=turn``: inside that model request, after it is in the ledger
  and before the answer returns.

``gate={"city": ..., "file": ...}`` makes that tool wait until the file exists
before its effect, so a test can hold one process inside a tool while another
tries to take the run. ``barrier={"dir": ..., "parties": n}`` makes the first
`get_run` (the engine reads the header when the lease is busy, to see whether
its owner died) wait until ``n`` processes have read it, so they all try to
take over from the same dead owner at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from durable_agent import Agent, ScriptedModel, Task, ToolCall, ToolContext
from durable_agent.backend import Backend
from durable_agent.models import ModelResponse
from durable_agent.records import Event, Lease, Message, RunHeader
from durable_agent.registry import open_backend
from durable_agent.testing.crash import KillSwitchBackend

SCRIPT: list[str | ToolCall | list[ToolCall]] = [
    ToolCall("lookup", {"city": "Oslo"}),
    [ToolCall("lookup", {"city": "Rome"}), ToolCall("lookup", {"city": "Lima"})],
    ToolCall("lookup", {"city": "Kyiv"}),
    "Oslo, Rome, Lima and Kyiv are sunny",
]
"""Turn 0: one call; turn 1: two parallel calls; turn 2: one call; turn 3: the answer."""

CITIES = ("Oslo", "Rome", "Lima", "Kyiv")
MODEL_TURNS = len(SCRIPT)
TASK = "What is the weather in Oslo, Rome, Lima and Kyiv?"
LEASE_TTL = 600.0
"""Long enough that a resume which waited for a dead owner's lease would run into the
parent's deadline: "took over at once" then needs no measurement of how fast."""
WAIT_TIMEOUT = 300.0
"""How long a child waits at a gate or barrier: longer than any parent's deadline, so
the parent (not the child giving up) decides when a wait has failed."""


class Gate(TypedDict):
    city: str
    file: str


class Barrier(TypedDict):
    dir: str
    parties: int


class ChildArgs(TypedDict):
    store: str
    """The store's URL: ``sqlite:///…``, ``redis://…?prefix=…`` or ``file:///…``."""
    run_id: str
    mode: str
    """``start`` (Task with run_id) or ``continue`` (continue_run_async)."""
    ledger: str
    kill_after: NotRequired[int | None]
    kill_in_tool: NotRequired[str | None]
    kill_in_model: NotRequired[int | None]
    gate: NotRequired[Gate | None]
    barrier: NotRequired[Barrier | None]


class ChildResult(TypedDict):
    pid: int
    state: str | None
    output: str | None
    error: dict[str, str] | None
    writes: int
    write_seqs: list[list[int]]
    """The seqs of the events each durable write carried, in write order."""
    model_calls: int
    elapsed: float
    """Seconds spent in do_async / continue_run_async (Python start-up excluded)."""


def record(ledger: str, entry: dict[str, Any]) -> None:
    """Append one line to the ledger and fsync it: it survives our own SIGKILL."""
    line = (json.dumps({**entry, "pid": os.getpid()}) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    """Every entry of a ledger file (none if no effect ever happened)."""
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line]


def wait_for_file(path: str, timeout: float) -> None:
    """Poll until ``path`` exists; exit with a message after ``timeout`` (no child hangs)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"child {os.getpid()}: {path} did not appear within {timeout} s")
        time.sleep(0.02)


def meet(barrier: Barrier, timeout: float) -> None:
    """Arrive at ``barrier`` and wait until all its parties arrived (or ``timeout`` passes)."""
    where = Path(barrier["dir"])
    (where / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(where.iterdir())) < barrier["parties"]:
        if time.monotonic() > deadline:
            sys.exit(f"child {os.getpid()}: the other parties of {where} never arrived")
        time.sleep(0.01)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class RecordingKillSwitch(KillSwitchBackend):
    """A `KillSwitchBackend` that also remembers which seqs each write carried."""

    def __init__(
        self, inner: Backend, *, kill_after: int | None, barrier: Barrier | None
    ) -> None:
        super().__init__(inner, kill_after=kill_after)
        self.write_seqs: list[list[int]] = []
        self.barrier = barrier

    async def get_run(self, run_id: str) -> RunHeader:
        header = await super().get_run(run_id)
        barrier, self.barrier = self.barrier, None
        if barrier is not None:
            await asyncio.to_thread(meet, barrier, WAIT_TIMEOUT)
        return header

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        self.write_seqs.append([e.seq for e in events])
        await super().create_run(header, events)

    async def append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        lease: Lease,
        release: bool = False,
    ) -> Lease:
        # Noted before the write: a write that is then refused stays in the
        # list, which the parent's seq checks would notice.
        self.write_seqs.append([e.seq for e in events])
        return await super().append(
            run_id, events, expected_seq=expected_seq, lease=lease, release=release
        )


class LedgerModel(ScriptedModel):
    """`ScriptedModel` that records each request in the ledger (and may die in one)."""

    def __init__(self, ledger: str, kill_in_turn: int | None) -> None:
        super().__init__(SCRIPT)
        self.ledger = ledger
        self.kill_in_turn = kill_in_turn

    async def request(self, messages: Sequence[Message], **options: Any) -> ModelResponse:
        turn = sum(1 for m in messages if m.role == "assistant")
        record(self.ledger, {"kind": "model", "turn": turn})
        if turn == self.kill_in_turn:
            die()
        return await super().request(messages, **options)


def make_lookup(ledger: str, kill_in_tool: str | None, gate: Gate | None) -> Any:
    async def lookup(city: str, ctx: ToolContext) -> str:
        """Look up the weather in a city."""
        if gate is not None and city == gate["city"]:
            await asyncio.to_thread(wait_for_file, gate["file"], WAIT_TIMEOUT)
        record(
            ledger,
            {
                "kind": "tool",
                "call_id": ctx.call_id,
                "city": city,
                "key": ctx.idempotency_key,
                "attempt": ctx.attempt,
            },
        )
        if city == kill_in_tool:
            die()
        return f"sunny in {city}"

    return lookup


async def main(args: ChildArgs) -> ChildResult:
    store = RecordingKillSwitch(
        open_backend(args["store"]),
        kill_after=args.get("kill_after"),
        barrier=args.get("barrier"),
    )
    model = LedgerModel(args["ledger"], args.get("kill_in_model"))
    agent = Agent(
        model,
        db=store,
        tools=[make_lookup(args["ledger"], args.get("kill_in_tool"), args.get("gate"))],
        retry=1,
        lease_ttl=LEASE_TTL,
    )
    error: dict[str, str] | None = None
    started = time.perf_counter()
    try:
        if args["mode"] == "start":
            await agent.do_async(Task(TASK, run_id=args["run_id"]))
        elif args["mode"] == "continue":
            await agent.continue_run_async(run_id=args["run_id"])
        else:
            raise ValueError(f"unknown mode {args['mode']!r}")
    except Exception as exc:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    elapsed = time.perf_counter() - started
    await store.close()
    last = agent.last_run
    return ChildResult(
        pid=os.getpid(),
        state=last.state.value if last is not None else None,
        output=last.output if last is not None else None,
        error=error,
        writes=store.writes,
        write_seqs=store.write_seqs,
        model_calls=model.calls,
        elapsed=elapsed,
    )


if __name__ == "__main__":
    result = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps(result), flush=True)
