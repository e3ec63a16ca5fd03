"""The facade as a newcomer meets it: imports, closing, sync twins and messages that help."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from durable_agent import (
    Agent,
    ConfigurationError,
    RunFailedError,
    RunNotFoundError,
    RunState,
    ScriptedModel,
    Task,
    Tool,
    ToolCall,
    tool,
)
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState as FsmRunState


def test_every_builtin_backend_is_importable_from_the_backends_package() -> None:
    from durable_agent import backends

    for name in ("SqliteBackend", "MemoryBackend", "JsonFileBackend", "RedisBackend"):
        cls = getattr(backends, name)
        assert cls.__name__ == name
    with pytest.raises(AttributeError, match="SqliteDatabase"):
        _ = backends.SqliteDatabase  # type: ignore[attr-defined]


def test_naming_sqlite_backend_does_not_import_the_redis_client() -> None:
    code = (
        "import sys\n"
        "from durable_agent.backends import SqliteBackend\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_seed_name_sqlite_database_is_the_sqlite_backend(tmp_path: Path) -> None:
    from durable_agent.compat import SqliteDatabase

    db = SqliteDatabase(db_file=str(tmp_path / "seed.db"), session_id="s1", user_id="u1")
    with Agent(ScriptedModel(["14"]), db=db, retry=1) as agent:
        result = agent.do(Task("What is 7 + 7?"), return_output=True)
    assert isinstance(db, SqliteBackend)
    assert result.output == "14"
    assert (result.session_id, result.user_id) == ("s1", "u1")


def test_async_with_agent_closes_its_store_so_no_resource_warning(tmp_path: Path) -> None:
    async def main() -> None:
        for index in range(2):  # two stores in one loop, as the report had it
            db = SqliteBackend(tmp_path / f"runs{index}.db", session_id="s1")
            async with Agent(ScriptedModel(["14"]), db=db, retry=1) as agent:
                assert await agent.do_async("What is 7 + 7?") == "14"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(main())
        gc.collect()


def test_closing_an_agent_twice_is_harmless_and_the_store_refuses_later_calls(
    tmp_path: Path,
) -> None:
    agent = Agent(ScriptedModel(["14"]), db=SqliteBackend(tmp_path / "r.db"), retry=1)
    agent.do("hi")
    agent.close()
    agent.close()
    with pytest.raises(Exception, match="closed"):
        agent.do("again")


def test_sync_twins_take_the_same_arguments_as_the_async_methods(tmp_path: Path) -> None:
    @tool(requires_confirmation=True)
    def refund(amount: int) -> str:
        """Refund an amount."""
        return f"refunded {amount}"

    model = ScriptedModel([ToolCall("refund", {"amount": 5}), "done"])
    with Agent(model, db=SqliteBackend(tmp_path / "r.db"), tools=[refund]) as agent:
        waiting = agent.do(Task("refund 5", run_id="r1"), return_output=True)
        assert waiting.state is RunState.WAITING
        (requirement,) = waiting.requirements
        decided = agent.decide_run("r1", approvals={requirement.id: True})
        assert decided.state is FsmRunState.TOOL_EXEC
        assert agent.get_run("r1").state is RunState.TOOL_EXEC
        # run_id may be given by position, like get_run("r1").
        assert agent.continue_run("r1") == "done"
        assert agent.continue_run(run_id="r1", return_output=True).state is RunState.DONE


def test_run_not_found_names_the_store_that_was_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with Agent(ScriptedModel(["x"]), db=SqliteBackend(path)) as agent:
        for call in (
            lambda: agent.get_run("nope"),
            lambda: agent.continue_run(run_id="nope"),
            lambda: agent.cancel_run("nope"),
            lambda: agent.decide_run("nope", approvals={"a": True}),
        ):
            with pytest.raises(RunNotFoundError) as caught:
                call()
            message = str(caught.value)
            assert "'nope'" in message
            assert str(path) in message
            assert "db=" in message


def test_a_tool_returning_a_non_json_value_says_fix_the_tool_then_continue(
    tmp_path: Path,
) -> None:
    class Opaque:
        pass

    calls = []

    def opaque() -> object:
        """Return something JSON cannot hold."""
        calls.append(1)
        return Opaque()

    model = ScriptedModel([ToolCall("opaque", {}), "ok"])
    with Agent(model, db=SqliteBackend(tmp_path / "r.db"), tools=[opaque]) as agent:
        with pytest.raises(RunFailedError) as caught:
            agent.do("go")
        message = str(caught.value)
        assert "opaque" in message
        assert "returned a Opaque, which is not JSON" in message
        fix_at = message.index("fix tool 'opaque'")
        assert fix_at < message.index("then continue with continue_run_async")
        assert agent.last_run is not None
        assert agent.last_run.state is RunState.ERROR
        assert agent.last_run.error is not None
        assert "ToolResultError" in agent.last_run.error.type


def test_a_lambda_tool_is_told_how_to_name_it() -> None:
    with pytest.raises(ConfigurationError, match=r"Tool\(fn, name='my_tool'\)"):
        Tool(lambda: "pong")
    with pytest.raises(ConfigurationError, match=r"@tool\(name='my_tool'\)"):
        Tool(print, name="not valid")
    assert Tool(lambda: "pong", name="ping").name == "ping"


def test_a_backends_tags_label_new_runs_but_do_not_filter_its_listings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"

    async def main() -> None:
        for session in ("s1", "s2"):
            async with Agent(
                ScriptedModel(["ok"]), db=SqliteBackend(path, session_id=session)
            ) as agent:
                await agent.do_async(Task("hi", run_id=f"run-{session}"))
        async with SqliteBackend(path, session_id="s1") as db:
            every = await db.list_runs()
            mine = await db.list_runs(session_id=db.session_id)
        assert {h.run_id for h in every.runs} == {"run-s1", "run-s2"}
        assert [h.run_id for h in mine.runs] == ["run-s1"]

    asyncio.run(main())


def test_run_busy_says_which_process_on_which_host_and_whether_it_is_alive(
    tmp_path: Path,
) -> None:
    from durable_agent import LeaseOwner, RunBusyError

    path = tmp_path / "r.db"
    # An empty script: the run rests in ERROR.
    with Agent(ScriptedModel([]), db=SqliteBackend(path)) as agent, pytest.raises(RunFailedError):
        agent.do(Task("go", run_id="busy"))
    # A live process of this host holds the run (a child that waits for its stdin to close).
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        here = LeaseOwner.process()
        holder = LeaseOwner(host=here.host, pid=child.pid)

        async def hold() -> None:
            async with SqliteBackend(path) as db:
                await db.acquire_lease("busy", holder, ttl=600)

        asyncio.run(hold())
        with (
            Agent(ScriptedModel(["x"]), db=SqliteBackend(path)) as agent,
            pytest.raises(RunBusyError) as caught,
        ):
            agent.continue_run("busy")
        message = str(caught.value)
        assert f"process {child.pid} on this host" in message
        assert "alive" in message
        assert "lease expires in" in message
    finally:
        child.communicate(b"")
