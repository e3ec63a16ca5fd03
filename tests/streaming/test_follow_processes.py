"""A follower in another process, SIGKILLed and reconnected with its last seq, misses nothing.

A runner process streams a run whose tools wait for gates the test opens. The
follower A (its own process) writes each event it receives to a file; once it
has seen the first gate's intent, the test SIGKILLs it and opens the gate, so
events land while nobody follows. Follower B reconnects with the last seq A
wrote; once B has caught up, the second gate opens and the run ends. A's and
B's stored events together are the run's log: every seq once, in order. On
Redis, B also receives the final answer's deltas, relayed over pub/sub.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_agent import open_backend
from durable_agent.fsm import RunState
from durable_agent.records import ModelResponseEvent
from tests._barriers import DEADLINE, wait_for_path, wait_until
from tests.backends.conftest import run
from tests.backends.postgres_server import URL as POSTGRES_URL
from tests.backends.postgres_server import admin, drop, new_schema
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)

CHILD = Path(__file__).with_name("follow_child.py")


def _start(role: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), role, json.dumps(args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # A line cut by the SIGKILL has no newline yet: only whole lines count.
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def _stored(db: str, run_id: str) -> Any:
    async def load() -> Any:
        backend = open_backend(db)
        try:
            return await backend.load_run(run_id)
        finally:
            await backend.close()

    return run(load())


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.db'}"
    elif request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        yield url
    else:
        admin("SELECT 1")  # skips (fails under CI) when the server does not answer
        schema = new_schema()
        yield f"{POSTGRES_URL}?schema={schema}"
        drop(schema)


def test_a_killed_follower_reconnects_with_its_last_seq_and_misses_nothing(
    db: str, tmp_path: Path
) -> None:
    run_id = f"follow-{uuid.uuid4().hex}"
    gates = tmp_path / "gates"
    gates.mkdir()
    runner = _start("run", {"db": db, "run_id": run_id, "gates": str(gates)})
    try:
        wait_for_path(gates / "started", awaiting="the run to exist", processes=[runner])
        out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        first = _start("follow", {"db": db, "run_id": run_id, "after_seq": 0, "out": str(out_a)})

        def saw_gate_one() -> bool:
            return any(e["kind"] == "tool_started" for e in _lines(out_a))

        wait_until(saw_gate_one, awaiting="follower A to see gate 1's intent",
                   processes=[first, runner])
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        seen_a = [e for e in _lines(out_a) if not e["ephemeral"]]
        last = seen_a[-1]["seq"]
        (gates / "go1").touch()

        def landed_while_away() -> bool:
            return _stored(db, run_id).header.seq > last + 1

        wait_until(landed_while_away, awaiting="events to land with nobody following",
                   processes=[runner])
        second = _start(
            "follow", {"db": db, "run_id": run_id, "after_seq": last, "out": str(out_b)}
        )
        wait_until(lambda: bool(_lines(out_b)), awaiting="follower B to catch up",
                   processes=[second, runner])
        (gates / "go2").touch()
        _, err = second.communicate(timeout=DEADLINE)
        assert second.returncode == 0, err
        _, err = runner.communicate(timeout=DEADLINE)
        assert runner.returncode == 0, err
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    stored = _stored(db, run_id)
    assert stored.header.state is RunState.DONE
    seen_b = _lines(out_b)
    stored_b = [e for e in seen_b if not e["ephemeral"] and "seq" in e]
    seqs = [e["seq"] for e in seen_a] + [e["seq"] for e in stored_b]
    assert seqs == [e.seq for e in stored.events], "every stored event once, in order"
    assert seen_b[-1]["kind"] == "finished"
    deltas = [e for e in seen_b if e["kind"] == "text_delta"]
    if db.startswith(("redis", "postgresql")):
        # B listened before gate 2 opened, so it saw the whole last answer stream.
        assert all(e["ephemeral"] for e in deltas)
        answer = [e for e in stored.events if isinstance(e, ModelResponseEvent)][-1].message
        assert "".join(e["text"] for e in deltas) == answer.content, (
            "the store relays the deltas of the call in flight; joined, they are the answer"
        )
    else:
        assert not deltas
