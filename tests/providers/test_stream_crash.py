"""SIGKILL mid-stream: the streaming process dies after its first delta; another finishes.

Process A streams a run through a real SDK: the model asks for a tool, the
tool runs, and the second answer starts streaming; the fake server sends one
delta and then nothing more. A creates a barrier file on its first delta; the
test SIGKILLs A then. Process B continues with ``continue_stream_async``: the
call is asked again (flagged as a repeat, with the discarded text announced),
the tool is not run again, and the output equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from durable_agent import RunState, ToolCall
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import ModelResponseEvent, ToolFinishedEvent
from durable_agent.testing import Fault, Reply
from tests import _preloaded
from tests._barriers import wait_for_path
from tests.providers.conftest import API_KEY, Provider, run

CHILD = Path(__file__).with_name("stream_child.py")
ANSWER = "Sunny in Oslo, twenty degrees, and no rain until the evening."


def child(provider: Provider, base_url: str, args: dict[str, Any]) -> _preloaded.Forked:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env[provider.key_env] = API_KEY
    env[provider.url_env] = base_url
    payload = {"provider": provider.name, "model": provider.model_name, **args}
    # A new process, forked with the package imported already (tests/_preloaded.py).
    return _preloaded.start(script=CHILD, args=[json.dumps(payload)], env=env)


def _load(db: str, run_id: str) -> Any:
    async def load() -> Any:
        backend = SqliteBackend(db)
        try:
            return await backend.load_run(run_id)
        finally:
            await backend.close()

    return run(load())


def test_a_process_killed_mid_stream_is_finished_by_another_as_if_uninterrupted(
    provider: Provider, tmp_path: Path
) -> None:
    call = ToolCall("lookup", {"city": "Oslo"})
    # The uninterrupted run, for comparison: the same script without the stall.
    with provider.server([call, Reply(text=ANSWER)], api_key=API_KEY).running_in_thread() as s:
        plain = child(provider, s.base_url, {
            "db": str(tmp_path / "plain.db"), "run_id": "plain", "mode": "start",
            "ledger": str(tmp_path / "plain.jsonl"), "barrier": str(tmp_path / "plain.flag"),
        })
        out, err = plain.communicate(timeout=120)
        assert plain.returncode == 0, err
    uninterrupted = json.loads(out)

    db, ledger, barrier = str(tmp_path / "runs.db"), tmp_path / "ledger.jsonl", tmp_path / "flag"
    items = [call, Fault.stall_stream(1, text=ANSWER), Reply(text=ANSWER)]
    args = {"db": db, "run_id": "killed", "ledger": str(ledger), "barrier": str(barrier)}
    with provider.server(items, api_key=API_KEY).running_in_thread() as server:
        first = child(provider, server.base_url, {**args, "mode": "start"})
        wait_for_path(barrier, awaiting="process A's first delta", processes=[first])
        first.send_signal(signal.SIGKILL)
        _, err = first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL, err
        killed_at = _load(db, "killed")
        assert killed_at.header.state is RunState.MODEL_CALL  # an intent, no answer

        second = child(provider, server.base_url, {**args, "mode": "continue"})
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        requests = server.requests

    resumed = json.loads(out)
    assert resumed["output"] == uninterrupted["output"] == ANSWER
    assert resumed["text"] == ANSWER
    executions = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["city"] for e in executions] == ["Oslo"], "the recorded tool call is not repeated"
    assert executions[0]["pid"] == first.pid
    starts = [e for e in resumed["ephemeral"] if e["kind"] == "model_call_started"]
    assert starts[0]["repeat"] is True
    assert [e["kind"] for e in resumed["ephemeral"]][:2] == ["model_call_started", "text_discarded"]
    assert len(requests) == 3
    assert requests[2].body["messages"] == requests[1].body["messages"]
    stored = _load(db, "killed")
    assert stored.header.state is RunState.DONE
    assert len([e for e in stored.events if isinstance(e, ToolFinishedEvent)]) == 1
    answers = [e for e in stored.events if isinstance(e, ModelResponseEvent)]
    assert len(answers) == 2
    assert answers[-1].repeated
    assert answers[-1].message.content == ANSWER
    plain_events = _load(str(tmp_path / "plain.db"), "plain").events
    assert [e.kind for e in stored.events] == [e.kind for e in plain_events]
