"""One process of a crash test: run the user's agent on a scratch store, maybe dying on the way.

Run as ``python -m durable_agent.testing._crashtest_child '<json>'`` by
`durable_agent.testing.crashtest`. It imports the agent, swaps its store for a
`KillSwitchBackend` over a scratch SQLite file (so the user's own store is
never touched), wraps each tool so that every execution is written to a
ledger file (fsynced, so it survives the SIGKILL) with whether the tool read
``ctx.idempotency_key``, and then:

* ``phase="start"`` does the task under a fixed run id; with ``kill_after=k``
  the process SIGKILLs itself right after durable write k (no timing, no sleep);
* ``phase="resume"`` continues the run in a new process. An in-doubt call is
  decided the way a careful human would, from the ledger: its recorded result
  when its body had finished before the kill, else "run it".

It prints one JSON line: what the run did, for the parent to compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

from durable_agent.agent import Agent, Task
from durable_agent.backend import Backend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import DurableAgentError
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    Event,
    JSONValue,
    Lease,
    ModelResponseEvent,
    RunHeader,
    ToolFinishedEvent,
    ToolStartedEvent,
    TransitionEvent,
)
from durable_agent.testing._crashtest_target import load_agent
from durable_agent.testing.crash import KillSwitchBackend
from durable_agent.tools import Tool, ToolContext

__all__ = ["main"]

_MAX_DECISIONS: Final = 50
"""Rounds of in-doubt decisions before the child gives up (a loop would be a bug)."""


class _Recorder(KillSwitchBackend):
    """A `KillSwitchBackend` that also notes what each durable write carried."""

    def __init__(self, inner: Backend, *, kill_after: int | None) -> None:
        super().__init__(inner, kill_after=kill_after)
        self.carried: list[str] = []

    async def create_run(self, header: RunHeader, events: Sequence[Event]) -> None:
        self.carried.append(describe(events))
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
        self.carried.append(describe(events))
        return await super().append(
            run_id, events, expected_seq=expected_seq, lease=lease, release=release
        )


def describe(events: Sequence[Event]) -> str:
    """What one write carried, in a few words: ``answer asks add + intent add``."""
    words: list[str] = []
    for event in events:
        match event:
            case CreatedEvent():
                words.append("created")
            case TransitionEvent():
                words.append(event.trigger or "transition")
            case ModelResponseEvent():
                calls = [c.name for c in event.message.tool_calls]
                words.append(f"answer asks {', '.join(calls)}" if calls else "final answer")
            case ToolStartedEvent():
                words.append(f"intent {event.name}")
            case ToolFinishedEvent():
                words.append(f"result {event.result.name}")
            case _:
                words.append(event.kind)
    return " + ".join(words)


_SLOTS: Final = {f.name: ToolContext.__dict__[f.name] for f in dataclasses.fields(ToolContext)}


class _KeySpy(ToolContext):
    """A `ToolContext` that notes whether the tool read ``idempotency_key``."""

    __slots__ = ("_reads",)
    _reads: list[bool]

    @property
    def idempotency_key(self) -> str:
        self._reads.append(True)
        return str(_SLOTS["idempotency_key"].__get__(self, ToolContext))

    def __repr__(self) -> str:
        return f"ToolContext(call_id={self.call_id!r}, attempt={self.attempt})"

    @classmethod
    def of(cls, ctx: ToolContext) -> _KeySpy:
        spy = object.__new__(cls)
        for slot in _SLOTS.values():
            slot.__set__(spy, slot.__get__(ctx, ToolContext))
        object.__setattr__(spy, "_reads", [])
        return spy


def _note(ledger: str, entry: dict[str, JSONValue]) -> None:
    """Append one line to the ledger and fsync it: it survives this process's SIGKILL."""
    line = (json.dumps({**entry, "pid": os.getpid()}) + "\n").encode()
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _instrument(tool: Tool, ledger: str, phase: str) -> None:
    call = tool.call

    async def noted(arguments: Any, ctx: ToolContext) -> str:
        spy = _KeySpy.of(ctx)
        base: dict[str, JSONValue] = {"tool": tool.name, "call_id": ctx.call_id, "phase": phase}
        _note(ledger, {**base, "event": "started", "attempt": ctx.attempt})
        try:
            content = await call(arguments, spy)
        except BaseException as exc:
            _note(ledger, {**base, "event": "raised", "error": type(exc).__name__,
                           "read_key": bool(spy._reads)})
            raise
        _note(ledger, {**base, "event": "finished", "content": content,
                       "read_key": bool(spy._reads)})
        return content

    tool.call = noted  # type: ignore[method-assign]


def _ledger(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


async def _resume(agent: Agent, run_id: str, ledger: str) -> tuple[Any, list[dict[str, str]]]:
    in_doubt: list[dict[str, str]] = []
    out = await agent.continue_run_async(run_id, return_output=True)
    for _ in range(_MAX_DECISIONS):
        open_ = out.requirements
        if out.state is not RunState.WAITING or any(r.kind != "in_doubt" for r in open_):
            break
        done = {e["call_id"]: e["content"] for e in _ledger(ledger) if e["event"] == "finished"}
        results: dict[str, JSONValue] = {}
        approvals: dict[str, bool | str] = {}
        for r in open_:
            in_doubt.append({"id": r.id, "call_id": r.record.call_id, "tool": r.tool_name})
            if r.record.call_id in done:
                results[r.id] = done[r.record.call_id]
            else:
                approvals[r.id] = True
        out = await agent.continue_run_async(
            run_id, approvals=approvals, results=results, return_output=True
        )
    return out, in_doubt


async def _child(args: dict[str, Any]) -> dict[str, Any]:
    agent = load_agent(args["agent"])
    own = agent.db
    store = _Recorder(SqliteBackend(args["store"]), kill_after=args.get("kill_after"))
    # The agent runs on the scratch store: the engine writes through its backend.
    agent.db = store
    agent._engine.backend = store
    for t in agent.tools.values():
        _instrument(t, args["ledger"], args["phase"])
    run_id: str = args["run_id"]
    result: dict[str, Any] = {"pid": os.getpid(), "error": None, "in_doubt": []}
    try:
        if args["phase"] == "start":
            out = await agent.do_async(Task(args["task"], run_id=run_id), return_output=True)
        else:
            result["resumed_at_seq"] = (await store.get_run(run_id)).seq
            out, result["in_doubt"] = await _resume(agent, run_id, args["ledger"])
        result |= {"state": out.state.value, "output": out.output,
                   "waiting": [r.kind for r in out.requirements]}
    except DurableAgentError as exc:
        result |= {"state": None, "output": None, "error": f"{type(exc).__name__}: {exc}"}
    stored = await store.inner.load_run(run_id)
    result["writes"] = store.writes
    result["carried"] = store.carried
    result["intents"] = [
        {"seq": e.seq, "call_id": e.call_id, "tool": e.name, "attempt": e.attempt}
        for e in stored.events
        if isinstance(e, ToolStartedEvent)
    ]
    result["model_repeated"] = sum(
        1 for e in stored.events if isinstance(e, ModelResponseEvent) and e.repeated
    )
    await store.close()
    with contextlib.suppress(Exception):  # the agent's own store was never used here
        await own.close()
    return result


def main(argv: Sequence[str]) -> int:
    """Run one phase as ``argv[1]`` (JSON) says and print its result as one JSON line."""
    args = json.loads(argv[1])
    for entry in reversed(args.get("path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    print(json.dumps(asyncio.run(_child(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
