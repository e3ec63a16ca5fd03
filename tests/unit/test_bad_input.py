"""Bad input gets a clear error, and nothing stored is harmed."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

import durable_agent
from durable_agent import (
    Agent,
    ConfigurationError,
    CorruptRunError,
    DurabilityWarning,
    ModelNotAvailableError,
    RetryPolicy,
    RunState,
    SchemaVersionError,
    ScriptedModel,
    Task,
    ToolCall,
)
from durable_agent.backends.memory import MemoryBackend


def test_agent_rejects_a_model_of_the_wrong_type() -> None:
    with pytest.raises(ConfigurationError, match=r"model=.*ChatModel, got int"):
        Agent(123, db=MemoryBackend())  # type: ignore[arg-type]


def test_agent_rejects_a_malformed_model_string() -> None:
    with pytest.raises(ConfigurationError, match="provider/model-name"):
        Agent("gpt-4o", db=MemoryBackend())
    with pytest.raises(ConfigurationError, match="unknown model provider 'acme'"):
        Agent("acme/x", db=MemoryBackend())


def test_provider_strings_without_an_adapter_say_so() -> None:
    from durable_agent.models import register_model_provider

    register_model_provider("ghost", "durable_agent.models.ghost:GhostModel")
    with pytest.raises(ModelNotAvailableError, match="ScriptedModel"):
        Agent("ghost/model-1", db=MemoryBackend())


def test_a_provider_string_without_a_key_fails_before_any_run() -> None:
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        Agent("openai/gpt-4o-mini", db=MemoryBackend())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": 0}, "at least 1"),
        ({"retry": "3"}, "retry=.*int or RetryPolicy"),
        ({"retry": True}, "retry=.*int or RetryPolicy"),
        ({"db": 42}, "db=.*Backend, a store URL or None"),
        ({"db": "mongodb://x"}, "unknown store scheme 'mongodb'"),
        ({"tools": "lookup"}, "tools=.*list"),
        ({"tools": [42]}, "must be a function"),
        ({"system_prompt": 5}, "system_prompt"),
        ({"name": ""}, "name="),
        ({"lease_ttl": 0}, "lease_ttl"),
    ],
)
def test_agent_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    kwargs.setdefault("db", MemoryBackend())
    with pytest.raises(ConfigurationError, match=message):
        Agent(ScriptedModel(["x"]), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((42,), {}, "description"),
        (("",), {}, "description"),
        (("x",), {"run_id": 7}, "run_id"),
        (("x",), {"run_id": ""}, "run_id"),
        (("x",), {"tools": [None]}, "must be a function"),
    ],
)
def test_task_rejects_bad_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Task(*args, **kwargs)  # type: ignore[arg-type]


def test_tools_need_type_hints() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigurationError, match="parameter 'x' needs a type hint"):
        Agent(ScriptedModel(["x"]), db=MemoryBackend(), tools=[untyped])


def test_do_async_rejects_what_is_not_a_task() -> None:
    agent = Agent(ScriptedModel(["x"]), db=MemoryBackend())
    with pytest.raises(ConfigurationError, match="Task or a str"):
        asyncio.run(agent.do_async(42))  # type: ignore[call-overload]


def test_continue_needs_a_run_id_or_a_started_task() -> None:
    agent = Agent(ScriptedModel(["x"]), db=MemoryBackend())
    with pytest.raises(ConfigurationError, match="needs run_id"):
        asyncio.run(agent.continue_run_async(task=Task("never started")))


def test_sync_twin_inside_a_running_loop_says_to_await() -> None:
    agent = Agent(ScriptedModel(["x"]), db=MemoryBackend())

    async def inside() -> None:
        agent.do("hi")

    with pytest.raises(ConfigurationError, match="await do_async"):
        asyncio.run(inside())


def test_in_memory_default_warns_that_runs_are_not_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durable_agent.agent, "_warned_in_memory", False)
    with pytest.warns(DurabilityWarning, match="do not survive"):
        Agent(ScriptedModel(["x"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Agent(ScriptedModel(["x"]))  # only once per process


def test_retry_policy_validates() -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(initial_delay=-1)


def _stored_run(backend: MemoryBackend) -> str:
    agent = Agent(ScriptedModel([ToolCall("echo", {"text": "a"}), "done"]), db=backend,
                  tools=[echo])
    out = asyncio.run(agent.do_async("go", return_output=True))
    return out.run_id


def echo(text: str) -> str:
    """Echo the text."""
    return text


def test_a_corrupted_event_names_run_and_seq_and_other_runs_still_load() -> None:
    backend = MemoryBackend()
    damaged, healthy = _stored_run(backend), _stored_run(backend)
    backend._runs[damaged].events[2] = '{"kind": "model_response", "seq": 3, "state": "BOGUS"}'
    with pytest.raises(CorruptRunError, match=f"run '{damaged}'.*seq 3") as raised:
        asyncio.run(backend.load_run(damaged))
    assert (raised.value.run_id, raised.value.seq) == (damaged, 3)
    assert asyncio.run(backend.load_run(healthy)).header.state is RunState.DONE
    agent = Agent(ScriptedModel(["x"]), db=backend)
    with pytest.raises(CorruptRunError):
        asyncio.run(agent.continue_run_async(run_id=damaged))
    # The damaged record is left exactly as it was, for export or repair.
    assert "BOGUS" in backend._runs[damaged].events[2]


def test_a_record_from_a_newer_schema_is_refused_not_misread() -> None:
    backend = MemoryBackend()
    run_id = _stored_run(backend)
    record = json.loads(backend._runs[run_id].events[1])
    record["schema_version"] = 99
    backend._runs[run_id].events[1] = json.dumps(record)
    with pytest.raises(SchemaVersionError, match=r"schema_version 99.*upgrade durable-agent"):
        asyncio.run(backend.load_run(run_id))


def test_a_db_path_in_a_missing_directory_names_the_path(tmp_path: object) -> None:
    from pathlib import Path

    from durable_agent import StoreUnavailableError

    missing = Path(str(tmp_path)) / "no" / "such" / "dir" / "runs.db"
    agent = Agent(ScriptedModel(["x"]), db=f"sqlite:///{missing}")
    with pytest.raises(StoreUnavailableError, match="no/such/dir") as raised:
        asyncio.run(agent.do_async("hi"))
    assert "create" in str(raised.value).lower()
    assert not missing.parent.exists(), "no directory is created behind the user's back"
    asyncio.run(agent.db.close())
