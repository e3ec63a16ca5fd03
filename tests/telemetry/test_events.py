"""Retries, waits, decisions, cancellations, failures and recoveries are span events and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    ModelHTTPError,
    RetryPolicy,
    RunFailedError,
    ScriptedFailure,
    ScriptedModel,
    ToolCall,
    tool,
)
from durable_agent.backends.memory import MemoryBackend
from tests.telemetry.conftest import Recorded

FAST = RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.01)
ROOT = Path(__file__).resolve().parents[2]


def _events(recorded: Recorded) -> list[str]:
    return [
        e.name
        for s in recorded.spans()
        if s.name.startswith("invoke_agent")
        for e in s.events
        if e.name != "durable_agent.append"
    ]


def test_a_retried_model_attempt_is_an_event_and_a_failed_attempt(recorded: Recorded) -> None:
    flaky = ScriptedFailure(turn=0, error=ModelHTTPError(529, "overloaded"))
    agent = Agent(ScriptedModel(["done"], failures=[flaky]), db=MemoryBackend(), retry=FAST)
    agent.do("hi")
    assert _events(recorded) == ["durable_agent.retry"]
    failed, ok = recorded.spans("chat scripted")
    assert (failed.attributes or {})["error.type"] == "durable_agent.errors.ModelHTTPError"
    assert "error.type" not in (ok.attributes or {})
    assert (
        recorded.total(
            "durable_agent.model.attempts.failed",
            **{"error.type": "durable_agent.errors.ModelHTTPError"},
        )
        == 1
    )


def test_a_wait_a_decision_and_a_cancellation_are_events(recorded: Recorded) -> None:
    @tool(requires_confirmation=True)
    async def refund(order: str) -> str:
        return f"refunded {order}"

    script = [ToolCall("refund", {"order": "A1"}), ToolCall("refund", {"order": "B2"}), "done"]
    agent = Agent(ScriptedModel(script), db=MemoryBackend(), tools=[refund])
    first = agent.do("refund A1", return_output=True)
    (requirement,) = first.requirements
    second = asyncio.run(
        agent.continue_run_async(
            run_id=first.run_id, approvals={requirement.id: True}, return_output=True
        )
    )
    assert second.state.value == "WAITING"
    asyncio.run(agent.cancel_run_async(first.run_id, reason="REASONMARK"))
    assert _events(recorded) == [
        "durable_agent.wait",
        "durable_agent.decision",
        "durable_agent.wait",
        "durable_agent.cancel",
    ]
    assert "REASONMARK" not in recorded.text()
    assert (
        recorded.total("durable_agent.runs.finished", **{"durable_agent.run.state": "WAITING"}) == 2
    )
    assert (
        recorded.total("durable_agent.runs.finished", **{"durable_agent.run.state": "CANCELLED"})
        == 1
    )


def test_a_failure_and_the_recovery_from_it(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def fragile() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first call breaks")
        return "fine"

    caplog.set_level(logging.INFO, logger="durable_agent")
    agent = Agent(ScriptedModel([ToolCall("fragile"), "done"]), db=MemoryBackend(), tools=[fragile])
    with pytest.raises(RunFailedError):
        agent.do("go")
    assert agent.last_run is not None
    run_id = agent.last_run.run_id
    assert asyncio.run(agent.continue_run_async(run_id=run_id)) == "done"
    assert _events(recorded) == ["durable_agent.failure", "durable_agent.recovery"]
    failed, recovered = recorded.spans("invoke_agent agent")
    assert (failed.attributes or {})["error.type"] == "builtins.RuntimeError"
    assert failed.status.status_code.name == "ERROR"
    assert "first call breaks" not in recorded.text()  # error messages are content
    assert (recovered.attributes or {})["durable_agent.run.state.start"] == "ERROR"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("durable_agent")]
    assert any("recovering from ERROR" in m for m in messages)
    assert any("rests in ERROR" in m for m in messages)


def test_enabling_telemetry_without_the_api_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "from durable_agent import telemetry\n"
        "try:\n"
        "    telemetry.configure(enabled=True)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.startswith("ConfigurationError")
    assert 'pip install "durable-agent[otel]"' in done.stdout
