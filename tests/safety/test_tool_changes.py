"""A tool renamed, removed or retyped between a crash and the resume, with a call in flight.

Each case kills a real child process (SIGKILL) at a file barrier inside the
``charge`` tool, after its intent is durable and before its result, then
resumes in a new process whose tools differ. The call must not be reported
"unknown" nor silently re-run: the run waits with an in-doubt requirement that
names the change; once decided it finishes, and the ledger shows the effect
ran exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from durable_agent._timeline import timeline
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import StoredRun, ToolStartedEvent
from tests import _preloaded
from tests._barriers import wait_for_path

CHILD = Path(__file__).with_name("child.py")


def child(**args: Any) -> dict[str, Any]:
    done = _preloaded.run(script=CHILD, args=[json.dumps(args)], timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def kill_in_charge(
    tmp_path: Path, *, block_before_effect: bool = False, **args: Any
) -> dict[str, Any]:
    """Start the run in a child and SIGKILL it inside ``charge``; return the common args."""
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "run_id": "charge-1", **args}
    start = {**common, "mode": "start", "entered": str(tmp_path / "entered"),
             "block": True, "block_before_effect": block_before_effect}
    entered = tmp_path / "entered"
    proc = _preloaded.start(script=CHILD, args=[json.dumps(start)])
    try:
        wait_for_path(entered, awaiting="the child inside charge", processes=[proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return common


def load(tmp_path: Path) -> StoredRun:
    async def read() -> StoredRun:
        async with SqliteBackend(tmp_path / "runs.db") as store:
            return await store.load_run("charge-1")

    return asyncio.run(read())


def ledger(tmp_path: Path) -> list[str]:
    path = tmp_path / "ledger"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    ("tools", "says"),
    [
        ("renamed", "tool 'charge' is no longer registered (removed or renamed); charge_v2 "
                    "takes the same arguments (renamed?)"),
        ("removed", "tool 'charge' is no longer registered (removed or renamed)"),
        ("schema", "tool 'charge' changed since the call started (agent version '1' -> '2'): "
                   "its argument schema changed"),
    ],
)
@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_a_changed_tool_in_flight_waits_in_doubt_naming_the_change(
    tmp_path: Path, tools: str, says: str, idempotent: bool
) -> None:
    common = kill_in_charge(tmp_path, idempotent=idempotent, version="1")
    assert ledger(tmp_path) == ["charge 4242 charge-1:3:call_0_0"]
    intent = next(e for e in load(tmp_path).events if isinstance(e, ToolStartedEvent))
    assert (intent.name, intent.idempotent, intent.agent_version) == ("charge", idempotent, "1")
    assert intent.schema_hash is not None

    waiting = child(mode="continue", tools=tools, **{**common, "version": "2"})
    assert waiting["state"] == "WAITING"
    (req,) = waiting["requirements"]
    assert (req["kind"], req["tool"], req["id"]) == ("in_doubt", "charge", "call_0_0:in_doubt:1")
    assert says in req["detail"]
    assert ledger(tmp_path) == ["charge 4242 charge-1:3:call_0_0"]  # nothing ran again
    # The timeline (`durable-agent runs show`) says what changed.
    rows = timeline(load(tmp_path), full=True)
    assert any(says in row.detail for row in rows if row.kind == "waiting")

    # Decided (it did charge: here is its result), the run finishes in another process.
    done = child(mode="continue", tools=tools, **{**common, "version": "2"},
                 results={req["id"]: "charged 4242 (checked by hand)"})
    assert (done["state"], done["output"]) == ("DONE", "all done")
    assert ledger(tmp_path) == ["charge 4242 charge-1:3:call_0_0"]  # exactly once
    results = [e for e in load(tmp_path).events if e.kind == "tool_finished"]
    assert [r.result.content for r in results] == ["charged 4242 (checked by hand)"]


def test_a_changed_tool_confirmed_runs_again_under_its_new_schema_once(tmp_path: Path) -> None:
    common = kill_in_charge(tmp_path, idempotent=True)
    waiting = child(mode="continue", tools="schema", **common)
    (req,) = waiting["requirements"]
    # "Run it again": the new charge needs an amount the old call lacks, so the
    # model gets the validation error as the call's result; nothing is charged twice.
    done = child(mode="continue", tools="schema", approvals={req["id"]: True}, **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path) == ["charge 4242 charge-1:3:call_0_0"]
    finished = [e for e in load(tmp_path).events if e.kind == "tool_finished"]
    assert len(finished) == 1
    assert "amount" in finished[0].result.content


def test_an_unchanged_idempotent_tool_in_flight_still_runs_again_under_the_same_key(
    tmp_path: Path,
) -> None:
    common = kill_in_charge(tmp_path, idempotent=True, version="1")
    done = child(mode="continue", tools="v1", **{**common, "version": "2"})  # a new version alone
    assert done["state"] == "DONE"
    assert ledger(tmp_path) == ["charge 4242 charge-1:3:call_0_0"] * 2  # at-least-once, same key
