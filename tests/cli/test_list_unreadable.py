"""``runs list`` never hides a stored run: damaged and newer-version headers are rows of
their own (state ``corrupt`` / ``newer``), in the table and in ``--json``; the entries of a
JSON-file store that are not runs are named on stderr and left alone."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from durable_agent.records import SCHEMA_VERSION
from durable_agent.registry import open_backend
from durable_agent.testing.conformance import at, created, header
from tests.backends.redis_server import redis_url  # noqa: F401  (a fixture)
from tests.cli.checks import ok
from tests.cli.conftest import run_cli

READABLE = ["r4", "r3", "r1"]
"""The readable runs, newest first; "r2" is damaged and "r0" from a newer version."""


def _populate(url: str) -> None:
    async def main() -> None:
        async with open_backend(url) as store:
            for i in range(5):
                stored = header(f"r{i}", created_at=at(i), updated_at=at(i))
                await store.create_run(stored, [created()])

    asyncio.run(main())


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _populate(url)
    with closing(sqlite3.connect(tmp_path / "runs.db", isolation_level=None)) as conn:
        conn.execute("UPDATE runs SET state = 'BOGUS' WHERE run_id = 'r2'")
        newer = (SCHEMA_VERSION + 1,)
        conn.execute("UPDATE runs SET schema_version = ? WHERE run_id = 'r0'", newer)
    return url


def _jsonfile(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    url = f"file://{tmp_path / 'runs'}"
    _populate(url)
    (tmp_path / "runs" / "r2" / "header.json").write_text('{"run_id": "r2", "state": "BOGUS"}\n')
    newer = tmp_path / "runs" / "r0" / "header.json"
    fields = json.loads(newer.read_text())
    newer.write_text(json.dumps({**fields, "schema_version": SCHEMA_VERSION + 1}) + "\n")
    return url


def _redis(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    from redis import Redis

    prefix = f"cli-{uuid.uuid4().hex[:10]}:"
    base: str = request.getfixturevalue("redis_url")
    url = f"{base}?prefix={prefix}"
    _populate(url)
    with Redis.from_url(base) as client:
        client.hset(f"{prefix}{{r2}}:header", "state", "BOGUS")
        client.hset(f"{prefix}{{r0}}:header", "schema_version", str(SCHEMA_VERSION + 1))
    return url


STORES: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {
    "sqlite": _sqlite,
    "jsonfile": _jsonfile,
    "redis": _redis,
}


@pytest.mark.parametrize("kind", sorted(STORES))
def test_list_shows_damaged_and_newer_runs_as_such(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = STORES[kind](tmp_path, request)
    listed = run_cli("runs", "list", db=url)
    rows = [line.split() for line in ok(listed).splitlines()[1:]]
    assert [row[0] for row in rows[:3]] == READABLE, listed.stdout
    assert sorted(row[0] for row in rows[3:]) == ["r0", "r2"], listed.stdout
    states = {row[0]: row[1] for row in rows}
    assert (states["r2"], states["r0"], states["r4"]) == ("corrupt", "newer", "PENDING")
    assert "1 run could not be read (state corrupt: r2)" in listed.stderr
    assert "1 run written by a newer durable-agent (state newer: r0)" in listed.stderr

    # --json has them too, with why; paged one run at a time, each comes exactly once.
    for args in ((), ("--all", "--limit", "1")):
        data = json.loads(ok(run_cli("runs", "list", "--json", *args, db=url)))
        assert [r["run_id"] for r in data["runs"]] == READABLE
        why = {u["run_id"]: u for u in data["unreadable"]}
        assert sorted(why) == ["r0", "r2"], data["unreadable"]
        assert len(data["unreadable"]) == 2
        assert (why["r2"]["reason"], why["r0"]["reason"]) == ("corrupt", "newer_version")
        assert "'r2'" in why["r2"]["message"]
        assert "upgrade durable-agent" in why["r0"]["message"]

    # A prune of everything keeps what it cannot read.
    ok(run_cli("runs", "prune", "--older-than", "1s", "--state", "PENDING", db=url))
    left = json.loads(ok(run_cli("runs", "list", "--json", db=url)))
    assert left["runs"] == []
    assert sorted(u["run_id"] for u in left["unreadable"]) == ["r0", "r2"]


def test_list_prune_and_delete_work_around_stray_entries_of_a_json_file_store(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path / 'runs'}"
    _populate(url)
    root = tmp_path / "runs"
    (root / "README.txt").write_text("what this folder is")
    (root / "backup").mkdir()
    (root / "backup" / "old.tar").write_text("a backup")
    (root / ".notes.swp").write_text("an editor's swap file")

    listed = run_cli("runs", "list", db=url)
    assert [line.split()[0] for line in ok(listed).splitlines()[1:]] == [
        "r4", "r3", "r2", "r1", "r0"
    ]  # fmt: skip
    notes = [line for line in listed.stderr.splitlines() if "not a run" in line]
    assert notes == [
        f"ignored 3 entries of {url} that are not a run: .notes.swp, README.txt, backup/"
    ]
    data = json.loads(ok(run_cli("runs", "list", "--json", db=url)))
    assert (len(data["runs"]), data["unreadable"]) == (5, [])

    pruned = run_cli("runs", "prune", "--older-than", "1s", "--state", "PENDING", db=url)
    assert "deleted 5 runs" in ok(pruned)
    deleted = run_cli("runs", "delete", "README.txt", db=url)
    assert deleted.returncode != 0
    assert "Traceback" not in deleted.stderr
    assert (root / "README.txt").read_text() == "what this folder is"
    assert (root / "backup" / "old.tar").read_text() == "a backup"
    assert (root / ".notes.swp").exists()
