"""What only SqliteBackend promises, part two: damage isolated to one run, the file opened
(or refused) as it should be, and a backend that lives across event loops and processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from durable_agent.backend import Capability
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import (
    ConfigurationError,
    CorruptRunError,
    SchemaVersionError,
    StoreUnavailableError,
)
from durable_agent.fsm import RunState
from tests._barriers import DEADLINE, wait_until_async
from tests.backends.conftest import created, header, new_run, run, step
from tests.backends.sqlite_raw import raw_db

# -- damage stays with its run --------------------------------------------------------------


def _two_runs(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            for run_id in ("bad", "good"):
                lease = await new_run(store, run_id)
                await store.append(run_id, [step(2)], expected_seq=1, lease=lease)

    run(main())


def test_a_corrupt_event_row_fails_only_its_run(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE events SET body = '{garbage' WHERE run_id = 'bad' AND seq = 2")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(CorruptRunError, match=r"'bad'.*seq 2") as caught:
                await store.load_run("bad")
            assert (caught.value.run_id, caught.value.seq) == ("bad", 2)
            assert (await store.load_run("good")).header.seq == 2
            assert {h.run_id for h in (await store.list_runs()).runs} == {"bad", "good"}

    run(main())


def test_an_event_written_by_a_newer_version_raises_schema_version_error(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        where = "WHERE run_id = 'bad' AND seq = 2"
        (body,) = conn.execute(f"SELECT body FROM events {where}").fetchone()
        newer = json.loads(body) | {"schema_version": 99, "kind": "from_the_future"}
        conn.execute(f"UPDATE events SET body = ? {where}", (json.dumps(newer),))

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(SchemaVersionError, match="upgrade") as caught:
                await store.load_run("bad")
            assert (caught.value.found, caught.value.seq) == (99, 2)
            assert (await store.load_run("good")).header.seq == 2

    run(main())


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("state", "'BOGUS'", CorruptRunError),
        ("created_at", "'yesterday'", CorruptRunError),
        ("schema_version", "99", SchemaVersionError),
    ],
)
def test_a_damaged_header_fails_only_its_run(
    db_path: Path, column: str, value: str, error: type[CorruptRunError]
) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute(f"UPDATE runs SET {column} = {value} WHERE run_id = 'bad'")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(error, match="'bad'") as caught:
                await store.get_run("bad")
            assert caught.value.seq is None
            with pytest.raises(error):
                await store.load_run("bad")
            lease = (await store.get_run("good")).lease
            assert lease is not None
            with pytest.raises(error):
                await store.append("bad", [step(3)], expected_seq=2, lease=lease)
            await store.append("good", [step(3)], expected_seq=2, lease=lease)
            assert [h.run_id for h in (await store.list_runs()).runs] == ["good"]
            # A damaged row never shortens a page or ends the listing early.
            page = await store.list_runs(limit=1)
            assert ([h.run_id for h in page.runs], page.next_cursor) == (["good"], None)

    run(main())


def test_a_missing_event_row_makes_the_run_corrupt(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM events WHERE run_id = 'bad' AND seq = 1")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(CorruptRunError, match="'bad'"):
                await store.load_run("bad")

    run(main())


# -- opening the file ----------------------------------------------------------------------------


def test_a_missing_directory_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "runs.db"
    store = SqliteBackend(path)

    async def main() -> None:
        with pytest.raises(StoreUnavailableError, match="create the directory") as caught:
            await store.get_run("r1")
        assert str(path) in str(caught.value)
        await store.close()

    run(main())
    assert not path.parent.exists()


def test_a_file_with_a_newer_table_layout_is_refused(db_path: Path) -> None:
    _two_runs(db_path)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(StoreUnavailableError, match="upgrade durable-agent"):
                await store.get_run("good")

    run(main())


def test_a_file_that_is_not_a_database_is_reported(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)

    async def main() -> None:
        async with SqliteBackend(db_path) as store:
            with pytest.raises(StoreUnavailableError, match=str(db_path)):
                await store.get_run("r1")

    run(main())


@pytest.mark.parametrize(
    ("setting", "number"), [("OFF", 0), ("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)]
)
def test_synchronous_option_is_applied(db_path: Path, setting: Any, number: int) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, synchronous=setting) as store:
            pragmas = await store._read(
                lambda db: (
                    db.execute("PRAGMA synchronous").fetchone()[0],
                    db.execute("PRAGMA journal_mode").fetchone()[0],
                    db.execute("PRAGMA busy_timeout").fetchone()[0],
                )
            )
            assert pragmas == (number, "wal", 5000)

    run(main())


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((42,), {}, "db_file"),
        ((b"runs.db",), {}, "db_file"),
        ((":memory:",), {}, "MemoryBackend"),
        (("runs.db",), {"synchronous": "SOMETIMES"}, "synchronous"),
        (("runs.db",), {"synchronous": 2}, "synchronous"),
        (("runs.db",), {"busy_timeout": "5"}, "busy_timeout"),
        (("runs.db",), {"busy_timeout": -1}, "busy_timeout"),
        (("runs.db",), {"max_batch": 0}, "max_batch"),
        (("runs.db",), {"max_batch": 1.5}, "max_batch"),
        (("runs.db",), {"session_id": 7}, "session_id"),
    ],
)
def test_bad_options_raise_configuration_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SqliteBackend(*args, **kwargs)


def test_construction_needs_no_event_loop_and_touches_no_file(tmp_path: Path) -> None:
    store = SqliteBackend(db_file=tmp_path / "runs.db", session_id="s1", user_id="u1")
    assert not (tmp_path / "runs.db").exists()
    assert store.capabilities >= {
        Capability.CROSS_PROCESS,
        Capability.GROUP_COMMIT,
        Capability.DURABLE,
    }
    lower: Any = "normal"
    assert SqliteBackend(tmp_path / "x.db", synchronous=lower)._synchronous == "NORMAL"
    run(store.close())


# -- event loops and lifetime ----------------------------------------------------------------------


def _wait_for_threads(count: int) -> int:
    deadline = time.monotonic() + DEADLINE
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def test_one_backend_works_across_successive_asyncio_runs(db_path: Path) -> None:
    threads = threading.active_count()
    store = SqliteBackend(db_path)
    lease = run(new_run(store, "r1"))
    # The loop that ended closed its connection: nothing is left running.
    assert _wait_for_threads(threads) == threads
    lease = run(store.append("r1", [step(2)], expected_seq=1, lease=lease))
    run(store.append("r1", [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease))
    assert run(store.load_run("r1")).header.seq == 3
    run(store.close())
    assert _wait_for_threads(threads) == threads


_MODULE_LEVEL = """
import asyncio, sys
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.fsm import RunState
from durable_agent.records import CreatedEvent, RunHeader, UserMessage

db = SqliteBackend(db_file=sys.argv[1], session_id="s1", user_id="u1")
event = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))
asyncio.run(db.create_run(RunHeader(run_id="r1", seq=1), [event]))
print(asyncio.run(db.get_run("r1")).seq)
"""


def test_a_module_level_backend_never_closed_lets_the_process_exit(db_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _MODULE_LEVEL, str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "1", "")


def test_a_backend_dropped_with_its_connection_open_warns(db_path: Path) -> None:
    async def main() -> None:
        held = [SqliteBackend(db_path)]
        await held[0].create_run(header("r1"), [created()])
        link = held[0]._link
        assert link is not None
        # The only reference goes, and the backend with it: it is in no reference cycle.
        with pytest.warns(ResourceWarning, match="close"):
            held.clear()
        await wait_until_async(
            lambda: link.closed, awaiting="the cancelled writer to close the connection"
        )

    run(main())
