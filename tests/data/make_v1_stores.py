"""Write the stores of ``tests/data/v1/`` with the code of the previous release (schema 1).

Run it against a checkout of that release, never against this one:

    git worktree add --detach /tmp/old <release commit>
    python tests/data/make_v1_stores.py /tmp/old tests/data/v1

It imports durable-agent from the given checkout (dropping the editable
install's redirect), refuses to run unless that code writes schema version 1,
and writes the same four runs to an SQLite file (``runs.db``), a JSON-file
folder (``jsonfile/``) and a private Redis server, whose keys it dumps as data
(``redis.json``: each key with its type and value; `tests/migrations/redis_dump`
loads it back into a fresh server). The runs:

* ``done-1``: DONE after one ``lookup`` call;
* ``waiting-1``: WAITING for the confirmation of a ``refund`` call;
* ``error-1``: ERROR after a model failure (retry=1), resumable;
* ``inflight-1``: a ``charge`` call interrupted by the run's deadline: an
  intent with no result (schema 1 intents name no tool identity).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def use_old_code(checkout: Path) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if "editables" not in type(f).__module__]
    sys.path.insert(0, str(checkout))
    for name in [m for m in sys.modules if m.split(".")[0] == "durable_agent"]:
        del sys.modules[name]


async def write_runs(db: Any) -> None:
    from durable_agent import (
        Agent,
        ModelHTTPError,
        RunFailedError,
        RunTimeoutError,
        ScriptedFailure,
        ScriptedModel,
        Task,
        ToolCall,
        tool,
    )

    def lookup(order: str) -> str:
        """Look an order up."""
        return f"order {order}: 20 EUR"

    @tool(requires_confirmation=True)
    def refund(order: str, amount: int) -> str:
        """Refund an order."""
        return f"refunded {amount} on {order}"

    async def charge(card: str) -> str:
        """Charge a card (never returns here: the deadline interrupts it)."""
        await asyncio.Event().wait()
        return "unreachable"

    tools = [lookup, refund, charge]

    def agent(script: list[Any], **options: Any) -> Any:
        return Agent(ScriptedModel(script, **options), db=db, tools=tools, name="v1-agent")

    await agent([ToolCall("lookup", {"order": "7"}), "order 7 costs 20 EUR"]).do_async(
        Task("What does order 7 cost?", run_id="done-1")
    )
    out = await agent([ToolCall("refund", {"order": "7", "amount": 20}), "refunded"]).do_async(
        Task("Refund order 7", run_id="waiting-1"), return_output=True
    )
    assert out.state.value == "WAITING", out
    failing = ScriptedFailure(0, ModelHTTPError(503, "overloaded"), times=1)
    try:
        await Agent(
            ScriptedModel(["fine"], failures=[failing]), db=db, tools=tools, retry=1
        ).do_async(Task("Say fine", run_id="error-1"))
    except RunFailedError:
        pass
    else:
        raise AssertionError("error-1 should have failed")
    try:
        await agent([ToolCall("charge", {"card": "4242"}), "charged"]).do_async(
            Task("Charge card 4242", run_id="inflight-1"), timeout=0.5
        )
    except RunTimeoutError:
        pass
    else:
        raise AssertionError("inflight-1 should have timed out")


def dump_redis(url: str) -> list[dict[str, Any]]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    keys = []
    for key in sorted(client.scan_iter("*")):
        kind = client.type(key)
        value: Any
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "string":
            value = client.get(key)
        elif kind == "stream":
            value = [[i, f] for i, f in client.xrange(key)]
        else:
            raise AssertionError(f"key {key} of type {kind} is not dumped")
        ttl = client.pttl(key)
        keys.append({"key": key, "type": kind, "value": value, "pttl": ttl})
    client.close()
    return keys


def main(checkout: Path, out: Path) -> None:
    use_old_code(checkout)
    from durable_agent.records import SCHEMA_VERSION

    assert SCHEMA_VERSION == 1, f"{checkout} writes schema {SCHEMA_VERSION}, not 1"
    from durable_agent.backends.jsonfile import JsonFileBackend
    from durable_agent.backends.redis import RedisBackend
    from durable_agent.backends.sqlite import SqliteBackend

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    async def write_all(url: str) -> None:
        for db in (
            SqliteBackend(out / "runs.db", session_id="s1", user_id="u1"),
            JsonFileBackend(out / "jsonfile", session_id="s1", user_id="u1"),
            RedisBackend(url, session_id="s1", user_id="u1"),
        ):
            async with db:
                await write_runs(db)

    with tempfile.TemporaryDirectory() as folder:
        port = 20000 + int(time.time()) % 20000
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            time.sleep(0.5)  # a one-off generator, not a test: a pause is fine here
            asyncio.run(write_all(url))
            (out / "redis.json").write_text(json.dumps(dump_redis(url), indent=1) + "\n")
        finally:
            server.kill()
            server.wait()
    for wal in out.glob("runs.db-*"):
        wal.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
