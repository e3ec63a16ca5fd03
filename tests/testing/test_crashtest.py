"""`crashtest` on users' agents: real child processes SIGKILLed after each durable write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent import Agent, ConfigurationError, ScriptedModel
from durable_agent.testing import CrashtestError, crashtest
from durable_agent.testing._crashtest_target import check_model, pure_by_inspection, spec_of
from tests.testing import crashtest_agents

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "durable_agent", "crashtest", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=600, check=False,
    )


def test_the_readme_tour_agent_passes_at_every_kill_point(tmp_path: Path) -> None:
    done = cli(str(ROOT / "examples" / "crashtest_tour.py") + ":agent", "What is 7 + 7?",
               "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["writes"] == 4
    assert [k["write"] for k in report["kill_points"]] == [1, 2, 3, 4]
    assert all(k["matched"] and k["output"] == "14" for k in report["kill_points"])
    # Killed right after the intent: the resume cannot know, and runs add again.
    assert report["kill_points"][1]["ran_again"] == ["add (call_0_0)"]
    assert [(t["name"], t["pure"], t["flagged"]) for t in report["tools"]] == [
        ("add", "by inspection", False)
    ]
    assert not (tmp_path / "tour.db").exists(), "the agent's own store is never used"


def test_a_tool_that_ignores_its_key_is_flagged_and_a_non_idempotent_one_goes_in_doubt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects = tmp_path / "effects.txt"
    monkeypatch.setenv("CRASHTEST_EFFECTS", str(effects))

    report = crashtest(crashtest_agents.mixed, "Charge, book, refund, add", kill_points=[2, 4])

    assert not report.ok
    assert report.flagged == ("charge",)
    charge_kill, book_kill = report.kill_points
    assert charge_kill.carried == "answer asks charge + intent charge"
    assert charge_kill.ran_again == ("charge (call_0_0)",)
    assert book_kill.in_doubt == ("book (call_1_0)",)
    assert book_kill.ran_again == ("book (call_1_0)",)  # a human (the ledger) said: run it
    assert all(k.matched for k in report.kill_points)
    verdicts = {t.name: t for t in report.tools}
    assert verdicts["charge"].flagged
    assert verdicts["charge"].ran_again_at == (2,)
    assert "never reads ctx.idempotency_key" in verdicts["charge"].verdict
    assert verdicts["book"].verdict.startswith("ok: idempotent=False")
    assert verdicts["refund"].reads_key
    assert not verdicts["refund"].flagged
    assert verdicts["add"].pure == "by inspection"
    text = report.text()
    assert "FAILED: flagged: charge" in text
    assert effects.read_text().count("book 12") == 3, "once per run: clean, two kill points"


def test_the_command_exits_1_and_names_the_flagged_tool(tmp_path: Path) -> None:
    done = cli("tests.testing.crashtest_agents:mixed", "Charge", "--kill-points", "2",
               cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FLAGGED" in done.stdout
    assert "FAILED: flagged: charge" in done.stdout


def test_naming_a_tool_pure_silences_its_flag(tmp_path: Path) -> None:
    report = crashtest(crashtest_agents.mixed, "Charge", kill_points="2", pure=["charge"])
    assert report.ok, report.text()
    assert {t.name: t.pure for t in report.tools}["charge"] == "declared"


def test_an_agent_object_at_module_level_is_found_and_keep_keeps_the_stores(
    tmp_path: Path,
) -> None:
    assert spec_of(crashtest_agents.careful) == "tests.testing.crashtest_agents:careful"
    report = crashtest(crashtest_agents.careful, "Refund", kill_points="3", keep=tmp_path)
    assert report.ok, report.text()
    assert report.workdir == str(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["clean.db", "kill-3.db"]


@pytest.mark.parametrize("points", ["0", "6", "1,x", []])
def test_a_kill_point_outside_the_clean_runs_writes_is_refused(points: str | list[int]) -> None:
    with pytest.raises(ConfigurationError, match=r"kill point|kill points"):
        crashtest(crashtest_agents.careful, "Refund", kill_points=points)


def test_an_unknown_pure_tool_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigurationError, match=r"names \['nope'\], which are not tools"):
        crashtest(crashtest_agents.careful, "Refund", pure=["nope"])


def test_a_clean_run_that_waits_for_a_human_is_refused_with_why() -> None:
    with pytest.raises(CrashtestError, match="ended WAITING waiting for confirmation"):
        crashtest(crashtest_agents.asks, "Delete")


def test_an_agent_defined_inside_a_function_cannot_be_run_in_a_child() -> None:
    local = Agent(ScriptedModel(["x"]), db="memory://")
    with pytest.raises(ConfigurationError, match="define it at the top level"):
        crashtest(local, "x")
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        crashtest(lambda: local, "x")


def test_a_real_provider_endpoint_is_refused_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from durable_agent.models.openai import OpenAIModel

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    paid = Agent(OpenAIModel("gpt-4o-mini", api_key="sk-test"), db="memory://")
    with pytest.raises(ConfigurationError, match=r"api\.openai\.com.*allow_real_model"):
        check_model(paid, allow_real_model=False)
    check_model(paid, allow_real_model=True)
    local = OpenAIModel("gpt-4o-mini", api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    check_model(Agent(local, db="memory://"), allow_real_model=False)


def test_only_a_body_that_calls_nothing_is_pure_by_inspection() -> None:
    from durable_agent.tools import Tool

    assert pure_by_inspection(Tool(crashtest_agents.add))
    assert not pure_by_inspection(Tool(crashtest_agents.charge))
    assert not pure_by_inspection(Tool(crashtest_agents.refund))


def test_a_module_that_calls_crashtest_when_imported_fails_instead_of_recursing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRASHTEST_RECURSE", "1")
    with pytest.raises(CrashtestError, match=r"exited with status 1: .*not at import"):
        crashtest(crashtest_agents.recursive, "x")


def test_a_kill_point_the_run_never_reaches_is_a_mismatch_that_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRASHTEST_COUNTER", str(tmp_path / "count"))
    report = crashtest("tests.testing.crashtest_agents:drifting", "1 + 1?", kill_points=[4])

    assert not report.ok
    (point,) = report.kill_points
    assert not point.matched
    assert point.problem is not None
    assert "before write 4" in point.problem
    assert "is the agent deterministic?" in point.problem


def test_an_agent_a_test_module_imported_is_named_by_its_own_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    test_module = types.ModuleType("tests.somewhere.test_support")
    test_module.support = crashtest_agents.careful  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests.somewhere.test_support", test_module)
    monkeypatch.delitem(sys.modules, "tests.testing.crashtest_agents")
    monkeypatch.setitem(sys.modules, "tests.testing.crashtest_agents", crashtest_agents)
    assert spec_of(crashtest_agents.careful) == "tests.testing.crashtest_agents:careful"
