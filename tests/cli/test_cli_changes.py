"""The ``durable-agent`` commands that change runs: export, import, delete, prune, resume,
approve, reject and cancel.

Through the real entry point, on runs in every state (`tests.cli.scenario`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from durable_agent.fsm import RunState
from tests.cli.checks import (
    CALCULATOR,
    REFUNDS,
    fails,
    ok,
    states_of,
)
from tests.cli.conftest import Cli
from tests.cli.scenario import REFUND_REQUIREMENT, RUNS

# -- export / import / delete / prune ------------------------------------------------------------


def test_export_then_import_gives_the_same_run_in_another_store(cli: Cli, tmp_path: Path) -> None:
    exported = tmp_path / "run.json"
    done = cli("runs", "export", RUNS[RunState.WAITING], "-o", str(exported))
    ok(done)
    assert f"exported run {RUNS[RunState.WAITING]} (4 events) to {exported}" in done.stderr
    other = f"sqlite:///{tmp_path / 'other.db'}"
    imported = ok(cli("runs", "import", str(exported), db=other))
    assert (
        imported.strip()
        == f"imported run {RUNS[RunState.WAITING]} (WAITING, 4 events) into {other}"
    )
    again = json.loads(ok(cli("runs", "export", RUNS[RunState.WAITING], db=other)))
    original = json.loads(exported.read_text())
    assert again["events"] == original["events"]
    assert again["header"]["state"] == "WAITING"
    assert again["header"]["lease"] is None
    # The imported run is a real run: it can be decided and continued there.
    ok(cli("runs", "approve", RUNS[RunState.WAITING], REFUND_REQUIREMENT, db=other))


def test_import_reads_stdin_and_can_store_a_copy_under_a_new_id(cli: Cli) -> None:
    text = ok(cli("runs", "export", RUNS[RunState.DONE]))
    ok(cli("runs", "import", "-", "--run-id", "copy-of-done", stdin=text))
    assert states_of(cli)["copy-of-done"] == "DONE"
    # The live lease a crashed owner held is not carried over.
    text = ok(cli("runs", "export", RUNS[RunState.MODEL_CALL]))
    assert json.loads(text)["header"]["lease"] is not None
    ok(cli("runs", "import", "-", "--run-id", "copy-of-crash", stdin=text))
    copy = json.loads(ok(cli("runs", "export", "copy-of-crash")))
    assert copy["header"]["lease"] is None


@pytest.mark.parametrize(
    ("new_id", "says"),
    [
        ("a\x1fb", "runs import --run-id: 'a\\x1fb' holds '\\x1f' at position 1"),
        ("r" * 129, "is 129 characters long; a new run's id may hold at most 128"),
    ],
    ids=["unit-separator", "too-long"],
)
def test_import_refuses_a_new_run_id_a_store_cannot_keep_and_stores_nothing(
    cli: Cli, new_id: str, says: str
) -> None:
    before = states_of(cli)
    text = ok(cli("runs", "export", RUNS[RunState.DONE]))
    fails(cli("runs", "import", "-", "--run-id", new_id, stdin=text), says)
    assert states_of(cli) == before


def test_import_refuses_a_run_that_exists_and_files_that_are_not_exports(
    cli: Cli, tmp_path: Path
) -> None:
    text = ok(cli("runs", "export", RUNS[RunState.DONE]))
    fails(cli("runs", "import", "-", stdin=text), "already exists in sqlite:///")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    fails(cli("runs", "import", str(bad)), "is not a run exported by `durable-agent runs export`")
    bad.write_text("not json")
    fails(cli("runs", "import", str(bad)), "is not JSON")
    fails(cli("runs", "import", str(tmp_path / "missing.json")), "cannot read")
    document = json.loads(text)
    document["events"] = document["events"][:-1]
    bad.write_text(json.dumps(document))
    fails(cli("runs", "import", str(bad), "--run-id", "cut"), "the file was edited or cut short")
    document = json.loads(text)
    document["events"][1]["schema_version"] = 99
    bad.write_text(json.dumps(document))
    fails(cli("runs", "import", str(bad), "--run-id", "newer"), "schema_version 99")


def test_delete_removes_the_run(cli: Cli) -> None:
    assert (
        ok(cli("runs", "delete", RUNS[RunState.DONE])).strip()
        == f"deleted run {RUNS[RunState.DONE]}"
    )
    assert RUNS[RunState.DONE] not in states_of(cli)
    fails(cli("runs", "delete", RUNS[RunState.DONE]), f"run '{RUNS[RunState.DONE]}' not found in")


def test_prune_dry_run_counts_and_prune_deletes_finished_runs(cli: Cli) -> None:
    dry = ok(cli("runs", "prune", "--older-than", "0s", "--dry-run"))
    assert dry.startswith("would delete 2 runs in DONE or CANCELLED last updated before")
    assert len(states_of(cli)) == 7
    recent = ok(cli("runs", "prune", "--older-than", "30d"))
    assert recent.startswith("deleted 0 runs")
    pruned = ok(cli("runs", "prune", "--older-than", "0s"))
    assert pruned.startswith("deleted 2 runs in DONE or CANCELLED")
    assert set(states_of(cli).values()) == {
        "PENDING",
        "WAITING",
        "ERROR",
        "MODEL_CALL",
        "TOOL_EXEC",
    }


def test_prune_by_state_and_as_json(cli: Cli) -> None:
    report = json.loads(
        ok(cli("runs", "prune", "--older-than", "0s", "--state", "ERROR", "--json", "--dry-run"))
    )
    assert report["runs"] == 1
    assert report["dry_run"] is True
    assert report["states"] == ["ERROR"]
    report = json.loads(
        ok(cli("runs", "prune", "--older-than", "0s", "--state", "ERROR", "--json"))
    )
    assert report["runs"] == 1
    assert "ERROR" not in states_of(cli).values()


def test_prune_keeps_runs_a_live_process_holds(cli: Cli) -> None:
    # The crashed MODEL_CALL run still has an unexpired lease: prune and the dry run keep it.
    report = json.loads(
        ok(
            cli(
                "runs",
                "prune",
                "--older-than",
                "0s",
                "--state",
                "MODEL_CALL",
                "--dry-run",
                "--json",
            )
        )
    )
    assert report["runs"] == 0
    report = json.loads(
        ok(cli("runs", "prune", "--older-than", "0s", "--state", "MODEL_CALL", "--json"))
    )
    assert report["runs"] == 0



# -- resume / approve / reject / cancel ----------------------------------------------------------

@pytest.mark.parametrize(
    "state", [RunState.PENDING, RunState.ERROR, RunState.MODEL_CALL, RunState.TOOL_EXEC]
)
def test_resume_continues_a_failed_or_crashed_run_to_its_answer(cli: Cli, state: RunState) -> None:
    out = ok(cli("runs", "resume", RUNS[state], "--agent", CALCULATOR))
    assert out.splitlines()[0] == f"run {RUNS[state]} is DONE"
    assert "answer: 14 and 2" in out
    assert states_of(cli)[RUNS[state]] == "DONE"


def test_resume_of_a_waiting_run_lists_what_it_waits_for(cli: Cli) -> None:
    done = cli("runs", "resume", RUNS[RunState.WAITING], "--agent", REFUNDS)
    out = ok(done)
    assert f"run {RUNS[RunState.WAITING]} is WAITING" in out
    assert f"waiting for {REFUND_REQUIREMENT} (confirmation): refund(" in out
    assert "runs approve" in done.stderr


def test_approve_records_the_decision_and_resume_runs_the_tool(cli: Cli) -> None:
    run_id = RUNS[RunState.WAITING]
    done = cli("runs", "approve", run_id, REFUND_REQUIREMENT)
    assert ok(done).strip() == f"approved {REFUND_REQUIREMENT}; run {run_id} is TOOL_EXEC"
    assert f"runs resume {run_id} --agent" in done.stderr
    out = ok(cli("runs", "resume", run_id, "--agent", REFUNDS))
    assert "answer: Refund issued." in out
    shown = ok(cli("runs", "show", run_id))
    assert re.search(r"tool_finished\s+refund → refunded 49.90 EUR for order A-1001", shown), shown


def test_approve_with_the_agent_continues_the_run_at_once(cli: Cli) -> None:
    out = ok(cli("runs", "approve", RUNS[RunState.WAITING], REFUND_REQUIREMENT, "--agent", REFUNDS))
    assert f"run {RUNS[RunState.WAITING]} is DONE" in out


def test_reject_tells_the_model_and_the_tool_never_runs(cli: Cli) -> None:
    run_id = RUNS[RunState.WAITING]
    out = ok(
        cli(
            "runs",
            "reject",
            run_id,
            REFUND_REQUIREMENT,
            "--reason",
            "over the limit",
            "--agent",
            REFUNDS,
        )
    )
    assert f"run {run_id} is DONE" in out
    shown = ok(cli("runs", "show", run_id, "--full"))
    assert "refunded" not in shown
    assert re.search(r"tool_finished\s+refund error .*over the limit", shown), shown


def test_decisions_that_do_not_fit_are_one_line_errors(cli: Cli) -> None:
    fails(
        cli("runs", "approve", RUNS[RunState.WAITING], "nope"),
        "the open ones are: call_0_0:confirmation",
    )
    fails(cli("runs", "approve", RUNS[RunState.DONE], REFUND_REQUIREMENT), "is DONE, not WAITING")
    fails(
        cli("runs", "reject", "no-such-run", REFUND_REQUIREMENT), "run 'no-such-run' not found in"
    )
    fails(
        cli("runs", "approve", RUNS[RunState.DONE], REFUND_REQUIREMENT, "--agent", REFUNDS),
        "is DONE, not WAITING",
    )


def test_cancel_cancels_runs_nobody_runs_and_refuses_finished_ones(cli: Cli) -> None:
    for state in (RunState.WAITING, RunState.PENDING, RunState.ERROR, RunState.MODEL_CALL):
        out = ok(cli("runs", "cancel", RUNS[state], "--reason", "test"))
        assert out.strip() == f"run {RUNS[state]} is CANCELLED"
    out = ok(cli("runs", "show", RUNS[RunState.WAITING]))
    assert re.search(r"WAITING → CANCELLED\s+cancelled\s+cancelled in WAITING: test", out)
    ok(cli("runs", "cancel", RUNS[RunState.CANCELLED]))
    fails(cli("runs", "cancel", RUNS[RunState.DONE]), "a finished run cannot be cancelled")
    fails(cli("runs", "cancel", "no-such-run"), "run 'no-such-run' not found in")
    fails(cli("runs", "resume", RUNS[RunState.WAITING], "--agent", REFUNDS), "was cancelled: test")
