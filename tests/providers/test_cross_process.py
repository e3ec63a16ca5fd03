"""A run through a real SDK survives SIGKILL while the provider holds its request.

Process A starts the run: the model asks for a tool, the tool runs, and A's
second model request reaches the fake server, which holds it unanswered. The
test SIGKILLs A the moment that request arrives. Process B continues the run by
its id and finishes it; the tool ran once, and B's request carries the tool
result A recorded.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from durable_agent import RunState, ToolCall
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.records import ModelResponseEvent, ToolFinishedEvent
from durable_agent.testing import Fault
from tests import _preloaded
from tests.providers.conftest import API_KEY, Provider, run

CHILD = Path(__file__).with_name("child.py")
RUN_ID = "cross-process-run"


def child(provider: Provider, base_url: str, args: dict[str, Any]) -> _preloaded.Forked:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env[provider.key_env] = API_KEY
    env[provider.url_env] = base_url
    payload = {"provider": provider.name, "model": provider.model_name, "run_id": RUN_ID, **args}
    # A new process, forked with the package imported already (tests/_preloaded.py).
    return _preloaded.start(script=CHILD, args=[json.dumps(payload)], env=env)


def test_a_process_killed_during_its_second_model_request_is_finished_by_another(
    provider: Provider, tmp_path: Path
) -> None:
    db, ledger = str(tmp_path / "runs.db"), tmp_path / "ledger.jsonl"
    items = [ToolCall("lookup", {"city": "Oslo"}), Fault.hang(seconds=60), "Sunny in Oslo."]
    with provider.server(items, api_key=API_KEY).running_in_thread() as server:
        args = {"db": db, "ledger": str(ledger)}
        first = child(provider, server.base_url, {**args, "mode": "start"})
        try:
            server.wait_for_requests(2, timeout=120)  # start-up and SDK import under load
        except TimeoutError:
            first.kill()
            _, err = first.communicate(timeout=30)
            pytest.fail(f"process A never sent its second model request:\n{err}")
        # The server holds request 2 unanswered: A is inside its model call.
        first.send_signal(signal.SIGKILL)
        _, err = first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL, err

        second = child(provider, server.base_url, {**args, "mode": "continue"})
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        requests = server.requests

    assert json.loads(out)["output"] == "Sunny in Oslo."
    executions = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["city"] for e in executions] == ["Oslo"], "the tool ran once"
    assert executions[0]["pid"] == first.pid
    assert len(requests) == 3
    held, resumed = requests[1], requests[2]
    assert resumed.body["messages"] == held.body["messages"], "B asks what A asked"
    (result,) = provider.tool_results(resumed)
    assert result.content == "sunny in Oslo"

    async def load() -> Any:
        backend = SqliteBackend(db)
        try:
            return await backend.load_run(RUN_ID)
        finally:
            await backend.close()

    stored = run(load())
    assert stored.header.state is RunState.DONE
    assert len([e for e in stored.events if isinstance(e, ToolFinishedEvent)]) == 1
    final = [e for e in stored.events if isinstance(e, ModelResponseEvent)][-1]
    assert final.repeated, "the request lost with A is marked as made again"
