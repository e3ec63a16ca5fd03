"""Reconcile functions asked about a call in flight at a SIGKILL, for each answer and tool kind.

The child is killed inside ``charge`` (after its intent, before its result);
a new process resumes it with ``@tool(reconcile=fn)``. Where the answer says
the effect landed, it happened exactly once and the answer's result is the
call's result; where it did not land, the call runs now; where it cannot tell,
an idempotent tool runs again (same key) and an ``idempotent=False`` one waits
for a human. The answer is recorded as an event before anything acts on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.safety.test_tool_changes import child, kill_in_charge, ledger, load

KEY = "charge-1:3:call_0_0"


def kinds(tmp_path: Path) -> list[str]:
    return [e.kind for e in load(tmp_path).events]


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_landed_records_the_answered_result_and_never_runs_the_tool_again(
    tmp_path: Path, idempotent: bool
) -> None:
    common = kill_in_charge(tmp_path, idempotent=idempotent, reconcile="landed")
    done = child(mode="continue", **common)
    assert (done["state"], done["output"]) == ("DONE", "all done")
    assert ledger(tmp_path) == [f"charge 4242 {KEY}", f"reconcile charge {KEY} 4242"]
    events = load(tmp_path).events
    (answer,) = [e for e in events if e.kind == "reconciled"]
    assert (answer.answer, answer.attempt) == ("landed", 1)
    (finished,) = [e for e in events if e.kind == "tool_finished"]
    assert json.loads(finished.result.content) == {"charged": "4242", "found": True}
    assert finished.seq == answer.seq + 1  # one append: the answer and what it decided


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "not-idempotent"])
def test_not_landed_runs_the_call_now_once(tmp_path: Path, idempotent: bool) -> None:
    common = kill_in_charge(
        tmp_path, idempotent=idempotent, reconcile="not_landed", block_before_effect=True
    )
    assert ledger(tmp_path) == []  # killed before the effect
    done = child(mode="continue", **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path) == [f"reconcile charge {KEY} 4242", f"charge 4242 {KEY}"]
    assert kinds(tmp_path)[3:7] == ["tool_started", "reconciled", "tool_started", "tool_finished"]


def test_unknown_runs_an_idempotent_tool_again_under_the_same_key(tmp_path: Path) -> None:
    common = kill_in_charge(tmp_path, idempotent=True, reconcile="unknown")
    done = child(mode="continue", **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path) == [
        f"charge 4242 {KEY}", f"reconcile charge {KEY} 4242", f"charge 4242 {KEY}"
    ]


def test_unknown_makes_a_non_idempotent_call_wait_and_a_decision_finishes_it(
    tmp_path: Path,
) -> None:
    common = kill_in_charge(tmp_path, idempotent=False, reconcile="unknown")
    waiting = child(mode="continue", **common)
    assert waiting["state"] == "WAITING"
    (req,) = waiting["requirements"]
    assert req["kind"] == "in_doubt"
    assert "reconcile function could not tell" in req["detail"]
    # Asked once; resuming again without a decision neither asks again nor runs.
    assert child(mode="continue", **common)["state"] == "WAITING"
    assert ledger(tmp_path) == [f"charge 4242 {KEY}", f"reconcile charge {KEY} 4242"]
    done = child(mode="continue", results={req["id"]: "charged 4242"}, **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path) == [f"charge 4242 {KEY}", f"reconcile charge {KEY} 4242"]
