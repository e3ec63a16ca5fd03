"""Logging: every record names its run, seq and state; nothing prints unless configured."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent import Agent, ScriptedModel, ToolCall
from durable_agent.backends.memory import MemoryBackend
from tests.telemetry.flaky import strand

ROOT = Path(__file__).resolve().parents[2]


async def echo(text: str) -> str:
    return text


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("durable_agent")]


def test_every_record_carries_run_id_seq_and_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="durable_agent")
    agent = Agent(
        ScriptedModel([ToolCall("echo", {"text": "hi"}), "done"]),
        db=MemoryBackend(),
        tools=[echo],
    )
    output = asyncio.run(agent.do_async("hello", return_output=True))
    records = _ours(caplog)
    assert records
    for record in records:
        assert record.run_id == output.run_id  # type: ignore[attr-defined]
        assert hasattr(record, "seq")
        assert hasattr(record, "state")
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any("starts" in m for m in info)
    assert any("rests in DONE" in m for m in info)
    transitions = [r for r in records if r.levelno == logging.DEBUG]
    assert [r.state for r in transitions] == [  # type: ignore[attr-defined]
        "MODEL_CALL",
        "TOOL_EXEC",
        "MODEL_CALL",
        "DONE",
    ]
    assert [r.seq for r in transitions] == sorted(r.seq for r in transitions)  # type: ignore[attr-defined]


def test_info_is_logged_without_debug_and_without_telemetry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="durable_agent")
    agent = Agent(ScriptedModel(["done"]), db=MemoryBackend())
    asyncio.run(agent.do_async("hello"))
    levels = {r.levelno for r in _ours(caplog)}
    assert levels == {logging.INFO}


def test_a_stranded_run_and_a_failed_release_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="durable_agent")
    asyncio.run(strand())
    warnings = [r for r in _ours(caplog) if r.levelno == logging.WARNING]
    stranded = [r for r in warnings if "stranded" in r.getMessage()]
    released = [r for r in warnings if "could not be released" in r.getMessage()]
    assert len(stranded) == 1
    assert stranded[0].state == "TOOL_EXEC"  # type: ignore[attr-defined]
    assert len(released) == 1
    assert released[0].name == "durable_agent.lease"
    assert stranded[0].run_id == released[0].run_id  # type: ignore[attr-defined]


def test_the_library_prints_nothing_with_logging_unconfigured() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "telemetry" / "flaky.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == ""
