"""The hook is chosen once per segment: a plain one unless telemetry is on, and no import."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durable_agent import telemetry
from durable_agent.telemetry._hook import Hook, segment_hook
from durable_agent.telemetry._live import LiveHook, parse_traceparent
from tests.telemetry.conftest import Recorded

ROOT = Path(__file__).resolve().parents[2]


def test_no_opentelemetry_is_imported_when_nobody_asked() -> None:
    code = (
        "import asyncio, sys\n"
        "from durable_agent import Agent, ScriptedModel\n"
        "from durable_agent.backends.memory import MemoryBackend\n"
        "asyncio.run(Agent(ScriptedModel(['done']), db=MemoryBackend()).do_async('hi'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
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
    assert done.stdout.strip() == "[]"


def test_without_a_provider_the_plain_hook_is_chosen() -> None:
    import opentelemetry.trace  # noqa: F401  (imported, but no provider set)

    assert type(segment_hook("r", "agent")) is Hook


def test_configured_or_debug_the_live_hook_is_chosen(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(segment_hook("r", "agent"), LiveHook)
    telemetry.configure(enabled=False)
    assert type(segment_hook("r", "agent")) is Hook
    caplog.set_level(logging.DEBUG, logger="durable_agent")
    hook = segment_hook("r", "agent")
    assert isinstance(hook, LiveHook)
    assert hook.instruments is None  # DEBUG logs only


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "01-" + "1" * 32 + "-" + "2" * 16 + "-01",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        "00-xyz-abc-01",
    ],
)
def test_a_stored_traceparent_that_is_not_well_formed_links_nothing(value: str) -> None:
    assert parse_traceparent(value) is None
