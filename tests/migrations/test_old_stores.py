"""Stores written by the previous release (schema 1, ``tests/data/v1``) load, list and continue.

The data was written by the code of main before schema version 2 (see
``tests/data/make_v1_stores.py``): an SQLite file, a JSON-file folder and a
Redis key dump; the PostgreSQL store is built by SQL as that release wrote it
(`tests.migrations.v1_postgres`). Each is copied, read by this code (records upcast when read),
migrated with ``durable-agent migrate`` (twice: the second finds nothing to do),
then every run is continued to DONE, with each run's side effects exactly as an
uninterrupted run would have them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_agent import Agent, RunState, ScriptedModel, ToolCall, open_backend, tool
from durable_agent.cli import main
from durable_agent.records import SCHEMA_VERSION, ToolStartedEvent
from tests.backends.postgres_server import URL as POSTGRES_URL
from tests.backends.postgres_server import admin, drop, new_schema
from tests.backends.redis_server import RedisServer, redis_available, skip_or_fail
from tests.migrations.redis_dump import load_dump
from tests.migrations.v1_postgres import write_v1_store

DATA = Path(__file__).parent.parent / "data" / "v1"
RUNS = ["inflight-1", "error-1", "waiting-1", "done-1"]


@pytest.fixture(params=["sqlite", "jsonfile", "redis", "postgres"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a copy of one v1 store."""
    if request.param == "sqlite":
        shutil.copy(DATA / "runs.db", tmp_path / "runs.db")
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    elif request.param == "jsonfile":
        shutil.copytree(DATA / "jsonfile", tmp_path / "jsonfile")
        yield f"file://{tmp_path / 'jsonfile'}"
    elif request.param == "postgres":
        admin("SELECT 1")  # skips (or fails under CI) when the server does not answer
        schema = new_schema()
        try:
            assert sorted(write_v1_store(POSTGRES_URL, schema)) == sorted(RUNS)
            yield f"{POSTGRES_URL}?schema={schema}"
        finally:
            drop(schema)
    else:
        reason = redis_available()
        if reason is not None:
            skip_or_fail(reason)
        with RedisServer(tmp_path / "redis") as server:  # private: no other test's keys
            assert load_dump(server.url, DATA / "redis.json") > 0
            yield server.url


def migrate(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["migrate", "--db", url, "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_a_store_of_the_previous_release_loads_lists_and_continues_after_migrate(
    old_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    charged: list[str] = []

    def lookup(order: str) -> str:
        """Look an order up."""
        return f"order {order}: 20 EUR"

    @tool(requires_confirmation=True)
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        return f"refunded {amount} on {order}"

    def charge(card: str) -> str:
        """Charge a card."""
        charged.append(card)
        return f"charged {card}"

    async def read_and_list() -> None:
        async with open_backend(old_store) as db:
            page = await db.list_runs()
            assert sorted(h.run_id for h in page.runs) == sorted(RUNS)
            assert page.unreadable == ()
            for run_id in RUNS:
                stored = await db.load_run(run_id)
                assert {e.schema_version for e in stored.events} == {SCHEMA_VERSION}
            inflight = await db.load_run("inflight-1")
            (intent,) = [e for e in inflight.events if isinstance(e, ToolStartedEvent)]
            assert (intent.name, intent.schema_hash, intent.idempotent) == ("charge", None, None)

    asyncio.run(read_and_list())  # before the migration: upcast when read
    assert main(["migrate", "--db", old_store, "--json", "--dry-run"]) == 0
    dry: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert (dry["dry_run"], dry["runs_rewritten"]) == (True, len(RUNS))
    first = migrate(old_store, capsys)  # the dry run changed nothing: all four are still old
    assert first["schema_version"] == SCHEMA_VERSION
    assert first["supported"] is True
    assert first["runs_rewritten"] == len(RUNS)
    assert first["runs_checked"] == len(RUNS)
    again = migrate(old_store, capsys)
    assert again["runs_rewritten"] == 0
    asyncio.run(read_and_list())  # after it: the same runs, the same reading

    async def continue_all() -> dict[str, str]:
        scripts: dict[str, list[Any]] = {
            "done-1": [ToolCall("lookup", {"order": "7"}), "order 7 costs 20 EUR"],
            "waiting-1": [ToolCall("refund", {"order": "7", "amount": 20}), "refunded"],
            "error-1": ["fine"],
            "inflight-1": [ToolCall("charge", {"card": "4242"}), "charged"],
        }
        answers: dict[str, str] = {}
        async with open_backend(old_store) as db:
            for run_id, script in scripts.items():
                agent = Agent(ScriptedModel(script), db=db, tools=[lookup, refund, charge])
                approvals = {"call_0_0:confirmation": True} if run_id == "waiting-1" else None
                answers[run_id] = await agent.continue_run_async(run_id, approvals=approvals)
            page = await db.list_runs(states=[RunState.DONE])
            assert sorted(h.run_id for h in page.runs) == sorted(RUNS)
        return answers

    assert asyncio.run(continue_all()) == {
        "done-1": "order 7 costs 20 EUR",
        "waiting-1": "refunded",
        "error-1": "fine",
        "inflight-1": "charged",
    }
    # The in-flight v1 intent names no identity; its tool is unchanged and idempotent,
    # so it runs again once (at-least-once), as before this release.
    assert charged == ["4242"]
