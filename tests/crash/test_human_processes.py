"""Human decisions and cancellation across real processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import StoredRun
from tests import _preloaded
from tests._barriers import wait_for_path

CHILD = Path(__file__).with_name("hitl_child.py")


def child(**args: Any) -> dict[str, Any]:
    done = _preloaded.run(script=CHILD, args=[json.dumps(args)], timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def spawn(**args: Any) -> _preloaded.Forked:
    """``python hitl_child.py ARGS`` in a new process, forked with the package imported."""
    return _preloaded.start(script=CHILD, args=[json.dumps(args)])


def load(db: Path, run_id: str) -> StoredRun:
    async def read() -> StoredRun:
        async with SqliteBackend(db) as store:
            return await store.load_run(run_id)

    return asyncio.run(read())


def ledger(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_waiting_run_survives_its_process_and_is_approved_from_another(
    tmp_path: Path,
) -> None:
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "refund", "run_id": "refund-1"}
    first = child(mode="start", **common)
    assert first["state"] == "WAITING"
    (req,) = first["requirements"]
    assert (req["kind"], req["tool"]) == ("confirmation", "refund")
    assert ledger(tmp_path / "ledger") == []
    # A new process finds it by listing WAITING runs, then approves by id.
    assert child(mode="list_waiting", **common)["waiting"] == ["refund-1"]
    done = child(mode="continue", approvals={req["id"]: True}, **common)
    assert (done["state"], done["output"]) == ("DONE", "refund issued")
    assert ledger(tmp_path / "ledger") == ["refund A1"]


def test_an_external_result_comes_from_another_process(tmp_path: Path) -> None:
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "ship", "run_id": "ship-1"}
    (req,) = child(mode="start", **common)["requirements"]
    assert req["kind"] == "external"
    done = child(mode="continue", results={req["id"]: {"tracking": "Z9"}}, **common)
    assert (done["state"], done["output"]) == ("DONE", "shipped")
    assert ledger(tmp_path / "ledger") == [], "the caller ran it, not the agent"


def test_user_input_comes_from_another_process(tmp_path: Path) -> None:
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "transfer", "run_id": "transfer-1"}
    (req,) = child(mode="start", **common)["requirements"]
    assert req["kind"] == "user_input"
    done = child(mode="continue", inputs={req["id"]: {"account": "DE89"}}, **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path / "ledger") == ["transfer 5.0 DE89"]


def test_a_rejection_from_another_process_reaches_the_model(tmp_path: Path) -> None:
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "refund", "run_id": "refund-2"}
    rid = child(mode="start", **common)["requirements"][0]["id"]
    done = child(mode="continue", approvals={rid: "amount too high"}, **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path / "ledger") == []
    tool_result = next(
        e for e in load(tmp_path / "runs.db", "refund-2").events if e.kind == "tool_finished"
    )
    assert tool_result.result.is_error  # type: ignore[union-attr]
    assert "amount too high" in tool_result.result.content  # type: ignore[union-attr]


def test_a_non_idempotent_call_killed_between_intent_and_result_is_not_run_twice(
    tmp_path: Path,
) -> None:
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "charge", "run_id": "charge-1"}
    dead = _preloaded.run(
        script=CHILD, args=[json.dumps({"mode": "start", "die_in_charge": True, **common})],
        timeout=60,
    )
    assert dead.returncode == -9, dead.stderr
    assert ledger(tmp_path / "ledger") == ["charge 4242"]
    kinds = [e.kind for e in load(tmp_path / "runs.db", "charge-1").events]
    assert kinds[-1] == "tool_started", "killed between the intent and the result"
    waiting = child(mode="continue", **common)
    assert waiting["state"] == "WAITING"
    (req,) = waiting["requirements"]
    assert req["kind"] == "in_doubt"
    assert ledger(tmp_path / "ledger") == ["charge 4242"], "not re-run automatically"
    # A human checked the card processor: the charge went through. Skip with that result.
    done = child(mode="continue", results={req["id"]: "charged 4242 (verified)"}, **common)
    assert done["state"] == "DONE"
    assert ledger(tmp_path / "ledger") == ["charge 4242"]


def test_cancel_from_a_second_process_stops_the_first_at_the_next_boundary(
    tmp_path: Path,
) -> None:
    entered, gate = tmp_path / "entered", tmp_path / "gate"
    common = {"db": str(tmp_path / "runs.db"), "ledger": str(tmp_path / "ledger"),
              "script": "slow", "run_id": "slow-1", "entered": str(entered),
              "gate": str(gate)}
    first = spawn(mode="start", **common)
    try:
        wait_for_path(entered, awaiting="the first process to reach its tool", processes=[first])
        cancelled = child(mode="cancel", reason="operator stop", **common)
        # The first process is alive and holds the lease: it records CANCELLED itself.
        assert cancelled["state"] == "TOOL_EXEC"
        gate.touch()
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["state"] == "CANCELLED"
    assert ledger(tmp_path / "ledger") == ["slow-start one", "slow-end one"], (
        "the current call finished; no further model or tool call started"
    )
    stored = load(tmp_path / "runs.db", "slow-1")
    assert stored.header.state is RunState.CANCELLED
    assert stored.header.lease is None
    kinds = [e.kind for e in stored.events]
    assert kinds[-1] == "cancelled"
    assert kinds.count("model_response") == 1
    assert "tool_finished" in kinds, "history complete: the finished call's result is kept"
    again = child(mode="continue", **common)
    assert again["error"] == "RunCancelledError"
