"""The ``durable-agent`` commands that read runs (list, show, diagram); where the store is from.

Through the real entry point, on runs in every state (`tests.cli.scenario`).
The commands that change runs are `tests/cli/test_cli_changes.py`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent.diagram import machine_dot, machine_mermaid
from durable_agent.fsm import RunState
from tests.cli.checks import (
    CALCULATOR,
    NEWEST_FIRST,
    column,
    fails,
    ok,
    timeline_seqs,
)
from tests.cli.conftest import Cli, run_cli
from tests.cli.scenario import REFUND_REQUIREMENT, ROOT, RUNS

# -- runs list -----------------------------------------------------------------------------------


def test_list_shows_every_run_newest_first_as_plain_columns(cli: Cli) -> None:
    out = ok(cli("runs", "list"))
    assert out.splitlines()[0].split()[:2] == ["RUN", "ID"]
    assert column(out) == NEWEST_FIRST
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows == {run_id: state.value for state, run_id in RUNS.items()}
    assert not re.search(r"[─━│┃╭\x1b]", out), "a pipe gets no box drawing and no colour"


def test_list_filters_by_state_session_user_and_since(cli: Cli) -> None:
    waiting_done = column(ok(cli("runs", "list", "--state", "WAITING", "--state", "done")))
    assert waiting_done == [RUNS[RunState.WAITING], RUNS[RunState.DONE]]
    assert column(ok(cli("runs", "list", "--session", "s-other"))) == [RUNS[RunState.PENDING]]
    assert column(ok(cli("runs", "list", "--user", "u1"))) == NEWEST_FIRST[1:5]
    assert column(ok(cli("runs", "list", "--since", "1h"))) == NEWEST_FIRST
    future = cli("runs", "list", "--since", "2999-01-01")
    assert ok(future) == ""
    assert "no runs match" in future.stderr


def test_list_pages_with_a_cursor_and_all(cli: Cli) -> None:
    first = cli("runs", "list", "--limit", "3")
    assert column(ok(first)) == NEWEST_FIRST[:3]
    cursor = re.search(r"--cursor (\S+)", first.stderr)
    assert cursor is not None, first.stderr
    second = cli("runs", "list", "--limit", "3", "--cursor", cursor[1])
    assert column(ok(second)) == NEWEST_FIRST[3:6]
    assert column(ok(cli("runs", "list", "--limit", "2", "--all"))) == NEWEST_FIRST


def test_list_json_is_the_stored_headers(cli: Cli) -> None:
    listing = json.loads(ok(cli("runs", "list", "--json", "--limit", "2")))
    assert [r["run_id"] for r in listing["runs"]] == NEWEST_FIRST[:2]
    assert listing["next_cursor"]
    assert listing["runs"][0]["state"] == "PENDING"
    assert set(listing["runs"][0]) >= {"session_id", "user_id", "agent_name", "seq", "created_at"}


def test_listings_are_rich_tables_on_a_terminal(cli: Cli) -> None:
    out = ok(cli("runs", "list", env={"FORCE_COLOR": "1"}))
    assert "\x1b[" in out  # styled
    assert "─" in out  # drawn as a table
    assert RUNS[RunState.DONE] in out
    shown = ok(cli("runs", "show", RUNS[RunState.DONE], env={"FORCE_COLOR": "1", "COLUMNS": "200"}))
    assert "[call_0_0]" in shown, "cells are text, never rich markup"


# -- runs show -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(RunState), ids=lambda s: s.value)
def test_show_prints_the_header_and_one_timeline_row_per_event(cli: Cli, state: RunState) -> None:
    out = ok(cli("runs", "show", RUNS[state]))
    assert re.search(rf"^state\s+{state.value}$", out, re.M), out
    assert re.search(rf"^run\s+{RUNS[state]}$", out, re.M)
    events = json.loads(ok(cli("runs", "export", RUNS[state])))["events"]
    assert timeline_seqs(out) == [e["seq"] for e in events]


def test_show_details_the_model_calls_and_tool_calls(cli: Cli) -> None:
    out = ok(cli("runs", "show", RUNS[RunState.DONE]))
    assert re.search(
        r"MODEL_CALL → TOOL_EXEC\s+model_response\s+scripted-calculator · "
        r"\d+\+\d+ tokens · \d+ ms · attempt 1 → calls add\(a=7, b=7\), "
        r"add\(a=1, b=1\)",
        out,
    ), out
    assert re.search(r"tool_started\s+add\(a=7, b=7\) \[call_0_0\]", out)
    assert re.search(r"tool_finished\s+add → 14 · \d+ ms", out)
    assert re.search(r"MODEL_CALL → DONE\s+model_response .* answer \"14 and 2\"", out)
    assert re.search(r"^usage\s+2 model requests, \d+ input \+ \d+ output tokens$", out, re.M)
    assert "answer: 14 and 2" in out


def test_show_gives_errors_with_type_and_message_and_the_next_step(cli: Cli) -> None:
    done = cli("runs", "show", RUNS[RunState.ERROR])
    out = ok(done)
    assert re.search(
        r"MODEL_CALL → ERROR\s+failed\s+ModelHTTPError: HTTP 400: bad request "
        r"\(in MODEL_CALL\)",
        out,
    ), out
    assert re.search(r"^error\s+ModelHTTPError: HTTP 400: bad request$", out, re.M)
    assert f"runs resume {RUNS[RunState.ERROR]} --agent" in done.stderr


def test_show_gives_waiting_requirements_and_human_decisions(cli: Cli) -> None:
    waiting = cli("runs", "show", RUNS[RunState.WAITING])
    out = ok(waiting)
    assert re.search(
        r"TOOL_EXEC → WAITING\s+waiting\s+waits for call_0_0:confirmation "
        r"\(confirmation: refund\(order=\"A-1001\", amount=49.9\)\)",
        out,
    ), out
    assert f"runs approve {RUNS[RunState.WAITING]} {REFUND_REQUIREMENT}" in waiting.stderr
    cancelled = ok(cli("runs", "show", RUNS[RunState.CANCELLED]))
    assert re.search(
        r"WAITING → CANCELLED\s+cancelled\s+cancelled in WAITING: customer withdrew", cancelled
    )
    ok(cli("runs", "reject", RUNS[RunState.WAITING], REFUND_REQUIREMENT, "--reason", "too much"))
    assert re.search(
        r"WAITING → TOOL_EXEC\s+decision\s+call_0_0:confirmation: rejected: too much",
        ok(cli("runs", "show", RUNS[RunState.WAITING])),
    )


def test_show_says_when_the_process_holding_the_lease_is_gone(cli: Cli) -> None:
    out = ok(cli("runs", "show", RUNS[RunState.MODEL_CALL]))
    assert re.search(
        r"^lease\s+held by .* \(process \d+ is gone: the run can be resumed now\)$", out, re.M
    ), out


def test_show_json_has_the_header_and_the_timeline(cli: Cli) -> None:
    shown = json.loads(ok(cli("runs", "show", RUNS[RunState.DONE], "--json")))
    assert shown["header"]["state"] == "DONE"
    assert [r["trigger"] for r in shown["timeline"] if r["trigger"]] == [
        "start",
        "tool_calls",
        "tools_done",
        "final_answer",
    ]
    assert shown["timeline"][2]["from"] == "MODEL_CALL"
    assert shown["timeline"][2]["to"] == "TOOL_EXEC"


def test_show_abridges_long_values_unless_full(cli: Cli, store: str) -> None:
    long_task = "x" * 300
    import asyncio

    from durable_agent.backends.sqlite import SqliteBackend
    from durable_agent.records import CreatedEvent, RunHeader, UserMessage

    async def add_long() -> None:
        async with SqliteBackend(store.removeprefix("sqlite:///")) as db:
            await db.create_run(
                RunHeader(run_id="long", seq=1),
                [
                    CreatedEvent(
                        seq=1, state=RunState.PENDING, messages=(UserMessage(content=long_task),)
                    )
                ],
            )

    asyncio.run(add_long())
    assert long_task not in ok(cli("runs", "show", "long"))
    assert "x…" in ok(cli("runs", "show", "long"))
    assert long_task in ok(cli("runs", "show", "long", "--full"))



# -- diagram -------------------------------------------------------------------------------------


def test_diagram_prints_the_machine_as_mermaid_or_dot(cli: Cli) -> None:
    assert ok(cli("diagram")) == machine_mermaid()
    assert ok(cli("diagram", "--format", "dot")) == machine_dot()


def test_diagram_writes_images_and_infers_the_format_from_the_suffix(
    cli: Cli, tmp_path: Path
) -> None:
    pytest.importorskip("pygraphviz")
    done = cli("diagram", "-o", str(tmp_path / "machine.svg"))
    ok(done)
    assert done.stderr.strip() == f"wrote {tmp_path / 'machine.svg'}"
    assert (tmp_path / "machine.svg").read_text().lstrip().startswith("<?xml")
    ok(cli("diagram", "--run", RUNS[RunState.DONE], "-o", str(tmp_path / "run.png")))
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")
    ok(
        cli(
            "diagram",
            "--run",
            RUNS[RunState.DONE],
            "--format",
            "mermaid",
            "-o",
            str(tmp_path / "run.txt"),
        )
    )
    assert "1. start" in (tmp_path / "run.txt").read_text()


def test_diagram_of_a_run_draws_its_path(cli: Cli) -> None:
    out = ok(cli("diagram", "--run", RUNS[RunState.CANCELLED]))
    assert "WAITING --> CANCELLED : 4. cancel" in out
    assert "class CANCELLED current" in out
    fails(cli("diagram", "--run", "no-such-run"), "run 'no-such-run' not found in")


def test_diagram_without_graphviz_says_what_to_install(cli: Cli, tmp_path: Path) -> None:
    # A sitecustomize that hides pygraphviz, and a PATH without dot.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['pygraphviz'] = None  # import raises ImportError\n"
    )
    env = {"PYTHONPATH": f"{hide}:{ROOT}", "PATH": str(tmp_path / "empty")}
    fails(
        cli("diagram", "-o", str(tmp_path / "x.svg"), env=env),
        "pip install 'durable-agent[diagrams]'",
    )
    assert ok(cli("diagram", env=env)) == machine_mermaid()


# -- where the store comes from, and errors --------------------------------------------------------


def test_db_option_before_or_after_the_command_beats_the_environment(
    cli: Cli, store: str, tmp_path: Path
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'nothing-here.db'}"
    assert column(ok(cli("--db", store, "runs", "list", db=elsewhere))) == NEWEST_FIRST
    assert column(ok(cli("runs", "list", "--db", store, db=elsewhere))) == NEWEST_FIRST
    fails(cli("runs", "list", db=elsewhere), "from $DURABLE_AGENT_DB); pass --db URL")


def test_without_db_or_environment_the_default_store_is_durable_db_here(
    pristine_store: Path, tmp_path: Path
) -> None:
    fails(
        run_cli("runs", "list", cwd=tmp_path),
        "no store at durable.db (sqlite:///durable.db, from the default); pass --db URL or set "
        "DURABLE_AGENT_DB",
    )
    assert not (tmp_path / "durable.db").exists(), "reading never creates a store"
    (tmp_path / "durable.db").write_bytes(pristine_store.read_bytes())
    assert column(ok(run_cli("runs", "list", cwd=tmp_path))) == NEWEST_FIRST


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "show", "no-such-run"], "run 'no-such-run' not found in sqlite:///"),
        (["runs", "export", "no-such-run"], "run 'no-such-run' not found in"),
        (["runs", "list", "--db", "bogus://x"], "unknown store scheme 'bogus'"),
        (["runs", "list", "--db", "redis://127.0.0.1:1/0"], "redis"),
        (
            ["runs", "resume", "x", "--agent", "no_such_module:agent"],
            "cannot import 'no_such_module'",
        ),
        (["runs", "resume", "x", "--agent", "os:path"], "is a module, not an Agent"),
        (
            ["runs", "resume", "x", "--agent", "tests.cli.scenario:nothing"],
            "has no attribute 'nothing'",
        ),
        (["runs", "resume", "x", "--agent", "nocolon"], "write module:attribute"),
        (["runs", "resume", "no-such-run", "--agent", CALCULATOR], "run 'no-such-run' not found"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40],
)
def test_errors_are_one_line_and_exit_1(cli: Cli, args: list[str], message: str) -> None:
    fails(cli(*args), message)


def test_a_file_that_is_not_a_store_is_unreachable(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database" * 100)
    fails(
        cli("runs", "list", "--db", f"sqlite:///{tmp_path / 'junk.db'}"), "file is not a database"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["runs"], "durable-agent runs: error: the following arguments are required: COMMAND"),
        (["runs", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["runs", "show"], "Missing argument 'RUN_ID'"),
        (["runs", "list", "--state", "SLEEPING"], "'SLEEPING' is not one of"),
        (["runs", "list", "--since", "yesterday"], "neither an age (7d, 12h) nor an ISO date"),
        (["runs", "prune"], "Missing option '--older-than'"),
        (["runs", "prune", "--older-than", "30"], "is not an age; write a number and a unit"),
        (["diagram", "--format", "jpeg"], "'jpeg' is not one of"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v) or "nothing",
)
def test_bad_usage_is_one_line_and_exit_2(cli: Cli, args: list[str], message: str) -> None:
    fails(cli(*args), message, code=2)


def test_debug_shows_the_traceback(cli: Cli) -> None:
    done = cli("--debug", "runs", "show", "no-such-run")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "not found in" in done.stderr


def test_the_console_script_is_the_same_command(store: str) -> None:
    script = Path(sys.executable).parent / "durable-agent"
    done = subprocess.run(
        [str(script), "runs", "list", "--db", store, "--state", "DONE"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert column(ok(done)) == [RUNS[RunState.DONE]]
    assert "demo" in ok(
        subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
    )
