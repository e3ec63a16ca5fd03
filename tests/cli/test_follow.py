"""``durable-agent runs follow`` and ``runs show --follow``: the timeline, live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from durable_agent.fsm import RunState
from tests._barriers import DEADLINE, wait_for_path
from tests.cli.conftest import Cli
from tests.cli.scenario import ROOT, RUNS

RUNNER = ROOT / "tests" / "streaming" / "follow_child.py"


def test_follow_prints_every_event_then_how_the_run_rests(cli: Cli) -> None:
    done = cli("runs", "follow", RUNS[RunState.DONE])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[0] == "1"
    assert "created" in lines[0]
    assert "MODEL_CALL → TOOL_EXEC" in done.stdout
    assert lines[-1].startswith(f"run {RUNS[RunState.DONE]} is DONE: ")
    waiting = cli("runs", "follow", RUNS[RunState.WAITING])
    assert "is WAITING for: " in waiting.stdout.splitlines()[-1]
    failed = cli("runs", "follow", RUNS[RunState.ERROR])
    assert "is ERROR: " in failed.stdout.splitlines()[-1]


def test_follow_json_is_one_object_per_line_from_after_seq(cli: Cli) -> None:
    result = cli("runs", "follow", RUNS[RunState.DONE], "--json", "--after-seq", "3")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs[0] == 4
    assert seqs == list(range(4, 4 + len(seqs)))
    assert events[-1]["kind"] == "finished"
    assert events[-1]["state"] == "DONE"
    assert all(e["record"]["seq"] == e["seq"] for e in events if "seq" in e)


def test_show_follow_shows_the_run_then_follows_it(cli: Cli) -> None:
    shown = cli("runs", "show", RUNS[RunState.DONE], "--follow")
    assert shown.returncode == 0, shown.stderr
    assert "state" in shown.stdout.splitlines()[1]
    assert shown.stdout.splitlines()[-1].startswith(f"run {RUNS[RunState.DONE]} is DONE")
    lines = cli("runs", "show", RUNS[RunState.DONE], "--follow", "--json").stdout.splitlines()
    assert json.loads(lines[0])["seq"] == 1
    assert json.loads(lines[-1])["kind"] == "finished"


def test_follow_of_an_unknown_run_fails_with_a_hint(cli: Cli) -> None:
    result = cli("runs", "follow", "no-such-run")
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "runs list" in result.stderr


def test_follow_prints_a_run_in_progress_in_another_process(tmp_path: Path, cli: Cli) -> None:
    db = f"sqlite:///{tmp_path / 'live.db'}"
    run_id = f"live-{uuid.uuid4().hex}"
    gates = tmp_path / "gates"
    gates.mkdir()
    runner = subprocess.Popen(
        [sys.executable, str(RUNNER), "run",
         json.dumps({"db": db, "run_id": run_id, "gates": str(gates)})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for_path(gates / "started", awaiting="the run to exist", processes=[runner])
        follower = subprocess.Popen(
            [sys.executable, "-m", "durable_agent", "--db", db, "runs", "follow", run_id],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        (gates / "go1").touch()
        (gates / "go2").touch()
        out, err = follower.communicate(timeout=DEADLINE)
        assert follower.returncode == 0, err
        runner.communicate(timeout=DEADLINE)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert "MODEL_CALL → DONE" in out
    assert out.splitlines()[-1].startswith(f"run {run_id} is DONE: Both gates are open")
