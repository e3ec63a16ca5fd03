"""Every command's ``--json`` parses, and says in fields what the text says in sentences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from durable_agent.fsm import RunState
from tests.cli.checks import ok, states_of
from tests.cli.conftest import Cli
from tests.cli.scenario import REFUND_REQUIREMENT, RUNS


def as_json(cli: Cli, *args: str) -> Any:
    return json.loads(ok(cli(*args, "--json")))


def test_list_json_has_runs_cursor_and_counts_per_state(cli: Cli) -> None:
    listing = as_json(cli, "runs", "list", "--counts", "--limit", "3")
    assert len(listing["runs"]) == 3
    assert listing["next_cursor"]
    assert listing["state_counts"]["complete"] is True
    assert listing["state_counts"]["counts"] == {s.value: 1 for s in RunState}


def test_list_json_filters_by_agent_and_id(cli: Cli) -> None:
    support = as_json(cli, "runs", "list", "--agent", "support", "--all")
    assert {r["run_id"] for r in support["runs"]} == {
        RUNS[RunState.WAITING],
        RUNS[RunState.CANCELLED],
    }
    found = as_json(cli, "runs", "list", "--search", "wait")
    assert [r["run_id"] for r in found["runs"]] == [RUNS[RunState.WAITING]]


def test_show_json_has_events_timeline_usage_requirements_and_lease(cli: Cli) -> None:
    shown = as_json(cli, "runs", "show", RUNS[RunState.WAITING])
    assert [e["seq"] for e in shown["events"]] == [r["seq"] for r in shown["timeline"]]
    assert shown["events"][0]["kind"] == "created"
    assert shown["usage"]["requests"] == 1
    assert shown["requirements"][0]["id"] == REFUND_REQUIREMENT
    assert shown["requirements"][0]["arguments"] == {"order": "A-1001", "amount": 49.9}
    assert shown["lease"] is None
    assert shown["markers"] == []
    held = as_json(cli, "runs", "show", RUNS[RunState.MODEL_CALL])
    assert held["lease"]["owner"]["status"] == "gone"
    assert held["lease"]["resumable_now"] is True
    failed = as_json(cli, "runs", "show", RUNS[RunState.ERROR])
    assert failed["error"]["failed_state"] == "MODEL_CALL"


def test_resume_json_marks_the_takeover_of_a_dead_process(cli: Cli) -> None:
    done = as_json(cli, "runs", "resume", RUNS[RunState.TOOL_EXEC], "--agent",
                   "tests.cli.scenario:calculator")  # fmt: skip
    assert done["state"] == "DONE"
    assert done["output"] == "14 and 2"
    shown = as_json(cli, "runs", "show", RUNS[RunState.TOOL_EXEC])
    [marker] = shown["markers"]
    assert marker["kind"] == "crash"
    assert marker["left_in"] == "TOOL_EXEC"
    assert marker["previous_owner"]["status"] == "gone"
    assert marker["owner"]["pid"] != marker["previous_owner"]["pid"]
    assert marker["stranded_seconds"] >= 0
    text = ok(cli("runs", "show", RUNS[RunState.TOOL_EXEC]))
    assert "CRASH: process" in text
    assert "gone) stopped in TOOL_EXEC" in text


def test_approve_json_records_who_decided(cli: Cli) -> None:
    decided = as_json(cli, "runs", "approve", RUNS[RunState.WAITING], REFUND_REQUIREMENT,
                      "--by", "ana@example.com")  # fmt: skip
    assert decided == {
        "run_id": RUNS[RunState.WAITING],
        "requirement_id": REFUND_REQUIREMENT,
        "decision": "confirm",
        "decided_by": "ana@example.com",
        "state": "TOOL_EXEC",
    }
    shown = as_json(cli, "runs", "show", RUNS[RunState.WAITING])
    assert shown["events"][-1]["decided_by"] == "ana@example.com"


def test_approve_with_an_agent_continues_and_prints_the_outcome(cli: Cli) -> None:
    done = as_json(cli, "runs", "approve", RUNS[RunState.WAITING], REFUND_REQUIREMENT,
                   "--agent", "tests.cli.scenario:refunds", "--by", "ops")  # fmt: skip
    assert done["state"] == "DONE"
    assert done["output"] == "Refund issued."
    events = as_json(cli, "runs", "show", RUNS[RunState.WAITING])["events"]
    assert [e.get("decided_by") for e in events if e["kind"] == "decision"] == ["ops"]


def test_reject_json(cli: Cli) -> None:
    decided = as_json(cli, "runs", "reject", RUNS[RunState.WAITING], REFUND_REQUIREMENT,
                      "--reason", "no receipt")  # fmt: skip
    assert decided["decision"] == "reject"
    assert decided["state"] == "TOOL_EXEC"


def test_cancel_json(cli: Cli) -> None:
    cancelled = as_json(cli, "runs", "cancel", RUNS[RunState.ERROR], "--reason", "not needed")
    assert cancelled == {
        "run_id": RUNS[RunState.ERROR],
        "state": "CANCELLED",
        "cancelled": True,
        "requested": False,
        "reason": "not needed",
    }


def test_export_import_and_delete_json(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "run.json"
    exported = as_json(cli, "runs", "export", RUNS[RunState.DONE], "-o", str(file))
    assert exported["run_id"] == RUNS[RunState.DONE]
    assert exported["file"] == str(file)
    imported = as_json(cli, "runs", "import", str(file), "--run-id", "copy")
    assert imported == {
        "run_id": "copy",
        "state": "DONE",
        "events": exported["events"],
        "source": str(file),
    }
    assert as_json(cli, "runs", "delete", "copy") == {"run_id": "copy", "deleted": True}
    assert "copy" not in states_of(cli)


def test_prune_json(cli: Cli) -> None:
    pruned = as_json(cli, "runs", "prune", "--older-than", "30d", "--dry-run")
    assert pruned["dry_run"] is True
    assert pruned["runs"] == 0


def test_diagram_json_has_the_format_and_the_text(cli: Cli, tmp_path: Path) -> None:
    drawn = as_json(cli, "diagram", "--run", RUNS[RunState.DONE])
    assert drawn["format"] == "mermaid"
    assert drawn["text"].startswith("stateDiagram")
    saved = as_json(cli, "diagram", "--format", "svg", "-o", str(tmp_path / "m.svg"))
    assert saved["file"] == str(tmp_path / "m.svg")
    assert saved["bytes"] == (tmp_path / "m.svg").stat().st_size


def test_demo_json_summarises_the_kill_and_the_resume(tmp_path: Path) -> None:
    from tests.cli.conftest import run_cli

    summary = json.loads(ok(run_cli("demo", "--json", cwd=tmp_path)))
    assert summary["killed"] is True
    assert summary["killed_pid"] != summary["resumed_pid"]
    assert summary["state"] == "DONE"
    assert summary["tool_runs"]["search_flights"] == {"before_kill": 1, "after_restart": 0}
    assert summary["answer"].startswith("Booked:")
