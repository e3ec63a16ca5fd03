"""The examples, the docs' code blocks and the `durable-agent demo` run offline and exit 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent.__main__ import main
from durable_agent.fsm import TRANSITIONS
from tests import _preloaded

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 120


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd``: ``-m MODULE`` and ``SCRIPT`` in a forked child.

    The child is a new process that skips importing the package (tests/_preloaded.py);
    interpreter flags such as ``-W error`` need a real start-up. CI also runs every
    example with a plain ``python`` (.ci/run).
    """
    if args[0] == "-m":
        return _preloaded.run(module=args[1], args=args[2:], cwd=cwd, timeout=TIMEOUT)
    if not args[0].startswith("-"):
        return _preloaded.run(script=Path(args[0]), args=args[1:], cwd=cwd, timeout=TIMEOUT)
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"quickstart_offline.py", "tools_and_retries.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_offline_and_exits_zero(example: Path, tmp_path: Path) -> None:
    assert "Run with:" in example.read_text(), "every example's docstring says how to run it"
    done = run_python([str(example)], cwd=tmp_path)
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"


def code_blocks(markdown: str) -> str:
    """The ```python blocks of a page, in order, except those after a ``<!-- no-run`` line."""
    blocks = []
    for match in re.finditer(r"(?ms)^```python\n(.*?)^```", markdown):
        before = markdown[: match.start()].rstrip().rsplit("\n", 1)[-1]
        if not before.startswith("<!-- no-run"):
            blocks.append(match.group(1))
    return "\n".join(blocks)


@pytest.mark.parametrize(
    "page", [p for p in PAGES if code_blocks(p.read_text())], ids=lambda p: p.name
)
def test_code_blocks_of_the_docs_run_in_order(page: Path, tmp_path: Path) -> None:
    code = code_blocks(page.read_text())
    script = tmp_path / "blocks.py"
    script.write_text(code)
    done = run_python(["-W", "error", str(script)], cwd=tmp_path)
    assert done.returncode == 0, f"code blocks of {page.name} failed:\n{done.stderr}"


def test_the_transition_table_in_the_concepts_page_matches_fsm() -> None:
    # Written by hand until the docs generate it from fsm.TRANSITIONS; this keeps it honest.
    rows = re.findall(
        r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+) \| `(\w+)` \|",
        (ROOT / "docs" / "concepts.md").read_text(),
        re.MULTILINE,
    )
    documented = {
        (trigger, source, dest)
        for trigger, sources, dest in rows
        for source in re.findall(r"`(\w+)`", sources)
    }
    assert documented == {(t.trigger, t.source.value, t.dest.value) for t in TRANSITIONS}


def test_demo_kills_a_run_and_shows_replayed_and_executed_steps(tmp_path: Path) -> None:
    done = run_python(["-m", "durable_agent", "demo"], cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "SIGKILLed right after durable write 3: writes 1-3 stored events 1-6" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+[A-Z_]+\s", line)]
    replayed = [r for r in rows if r.endswith("replayed from store")]
    executed = [r for r in rows if r.endswith("executed")]
    assert len(replayed) == 6, out
    assert executed, out
    assert len(replayed) + len(executed) == len(rows)
    assert re.search(r"search_flights\s+1 run\s", out), out
    assert re.search(r"search_hotels\s+2 runs\s+in flight at the kill", out), out
    assert re.search(r"book_hotel\s+1 run\s", out), out
    assert "Final answer: Booked: flight TP 531" in out
    store = re.search(r"store\s+(\S+)", out)
    assert store is not None
    assert not Path(store.group(1)).parent.exists(), "the temporary directory is removed"


def test_demo_keeps_the_database_where_asked(tmp_path: Path) -> None:
    db = tmp_path / "kept.db"
    done = run_python(
        ["-m", "durable_agent", "demo", "--db", str(db), "--kill-after", "6"], tmp_path
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "SIGKILLed right after durable write 6" in done.stdout
    assert "Final answer:" in done.stdout
    assert db.exists()


def test_demo_reports_a_run_that_was_never_killed(tmp_path: Path) -> None:
    done = run_python(["-m", "durable_agent", "demo", "--kill-after", "99"], cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "nothing was killed" in done.stdout
    assert not [line for line in done.stdout.splitlines() if line.endswith("executed")]
    assert "Final answer:" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["serve"], "invalid choice: 'serve'"),
        (["demo", "--kill-after", "0"], "must be at least 1"),
        (["demo", "--db", "/no/such/dir/x.db"], "directory /no/such/dir does not exist"),
    ],
)
def test_bad_usage_is_one_line_on_stderr_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("durable-agent")
    assert message in err


def test_help_lists_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "demo" in capsys.readouterr().out
