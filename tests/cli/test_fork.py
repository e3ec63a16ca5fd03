"""``durable-agent runs fork``: a new run from a prefix of a stored one, via the real command."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import Cli


def test_fork_without_an_agent_stores_the_fork_and_says_how_to_continue_it(cli: Cli) -> None:
    done = cli("runs", "fork", "run-done", "--at", "6", "--new-id", "f1")
    assert done.returncode == 0, done.stderr
    assert "forked run run-done at seq 6 into f1; it is TOOL_EXEC" in done.stdout
    assert "runs resume f1 --agent" in done.stdout + done.stderr

    shown = cli("runs", "show", "f1")
    assert re.search(r"forked\s+from run run-done at seq 6", shown.stdout), shown.stdout
    as_json = json.loads(cli("runs", "show", "f1", "--json").stdout)
    assert as_json["forked_from"] == {"run_id": "run-done", "seq": 6}

    resumed = cli("runs", "resume", "f1", "--agent", "tests.cli.scenario:calculator")
    assert resumed.returncode == 0, resumed.stderr
    assert "answer: 14 and 2" in resumed.stdout
    source = cli("runs", "show", "run-done", "--json")
    assert len(json.loads(source.stdout)["timeline"]) == 9, "the source is untouched"


def test_fork_with_an_agent_continues_the_fork_at_once(cli: Cli) -> None:
    done = cli("runs", "fork", "run-done", "--at", "8", "--agent",
               "tests.cli.scenario:calculator", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "DONE"
    assert result["output"] == "14 and 2"
    assert result["forked_from"] == {"run_id": "run-done", "seq": 8}


def test_fork_of_an_unknown_run_names_it_and_how_to_list_runs(cli: Cli) -> None:
    done = cli("runs", "fork", "nope", "--at", "1")
    assert done.returncode == 1
    assert "run 'nope' not found" in done.stderr
    assert "runs list" in done.stderr


def test_fork_at_a_seq_outside_the_log_says_which_seqs_there_are(cli: Cli) -> None:
    done = cli("runs", "fork", "run-done", "--at", "99")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "cannot fork run 'run-done' at seq 99: its events are seq 1 to 9" in done.stderr


def test_fork_onto_a_taken_id_is_refused(cli: Cli) -> None:
    done = cli("runs", "fork", "run-done", "--at", "3", "--new-id", "run-error")
    assert done.returncode == 1
    assert "that run id is taken" in done.stderr


def test_diagram_draws_a_fork_beside_its_source(cli: Cli) -> None:
    assert cli("runs", "fork", "run-done", "--at", "3", "--new-id", "f3").returncode == 0
    mermaid = cli("diagram", "--run", "run-done", "--run", "f3")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("stateDiagram-v2\n    direction LR")
    assert '"run run-done: DONE" as run0' in mermaid.stdout
    assert '"run f3: TOOL_EXEC (forked from run-done at seq 3)" as run1' in mermaid.stdout
    dot = cli("diagram", "--run", "run-done", "--run", "f3", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert "subgraph cluster_0" in dot.stdout
    assert "subgraph cluster_1" in dot.stdout
    assert 'r0_TOOL_EXEC -> r1_TOOL_EXEC [label="forked at seq 3"' in dot.stdout


def test_a_run_held_by_a_dead_process_forks_without_its_lease(cli: Cli) -> None:
    source = json.loads(cli("runs", "show", "run-tool-exec", "--json").stdout)
    last = len(source["timeline"])
    done = cli("runs", "fork", "run-tool-exec", "--at", str(last), "--agent",
               "tests.cli.scenario:calculator", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "DONE"
    after = json.loads(cli("runs", "show", "run-tool-exec", "--json").stdout)
    # The lease's time left (a number and a sentence) is read off the clock at each call.
    for shown in (source, after):
        shown["lease"].pop("expires_in")
        shown["lease"].pop("text")
    assert after == source, "the source, and its dead owner's lease, are untouched"
