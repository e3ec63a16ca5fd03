"""A crowd of processes opening one brand-new SQLite file at the same moment: every one
gets a working store, none fails with "database is locked" (a fleet starting together).

Each child opens a series of new files; before each one it reports ready through its
stdout pipe and waits for that file's go-file, which the test creates only once every
child is ready. So every file is opened by the whole crowd at once, many times over.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durable_agent.backends.sqlite import SqliteBackend
from tests.backends.conftest import run

CROWD = 8
FILES = 40
"""New files per test: each is opened by the whole crowd at once."""
BUSY_TIMEOUT = 60.0
"""The children's busy_timeout: a failure bound, not the property under test.

Without the open path's retries the WAL switch is refused at once, whatever the
busy_timeout; with them, on a loaded machine a crowd member holding the write
lock can be descheduled past the default 5 s, which says nothing about them.
"""

_OPENER = """
import asyncio, json, os, sys, time
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.testing.conformance import created, header

folder, name, files = sys.argv[1], sys.argv[2], int(sys.argv[3])
BUSY_TIMEOUT = float(sys.argv[4])

async def use(path: str) -> dict[str, object]:
    try:
        async with SqliteBackend(path, busy_timeout=BUSY_TIMEOUT) as store:
            await store.create_run(header(name), [created()])
            ids = [h.run_id for h in (await store.list_runs(limit=100)).runs]
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"saw_self": name in ids}

with asyncio.Runner() as runner:
    for index in range(files):
        go = os.path.join(folder, f"go-{index}")
        print(f"ready {index}", flush=True)
        deadline = time.monotonic() + 300
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit(f"no {go} within 300 s")
            time.sleep(0.0002)
        result = runner.run(use(os.path.join(folder, f"fresh-{index}.db")))
        print(json.dumps({"file": index, **result}), flush=True)
"""


class _Lines:
    """Lines of one child's stdout, read straight from the pipe so select() sees them all."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.buffer = proc, proc.stdout.fileno(), b""

    def has_line(self) -> bool:
        return b"\n" in self.buffer

    def pop(self) -> str:
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


def _one_line_each(children: list[_Lines], deadline: float) -> list[str]:
    """The next line of every child's stdout, waiting on the pipes until ``deadline``."""
    while not all(child.has_line() for child in children):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{sum(not c.has_line() for c in children)} opener(s) said nothing")
        pending = {c.fd: c for c in children if not c.has_line()}
        readable, _, _ = select.select(list(pending), [], [], left)
        for fd in readable:
            data = os.read(fd, 65536)
            if not data:
                _, err = pending[fd].proc.communicate(timeout=30)
                pytest.fail(f"an opener exited early:\n{err.decode()[-3000:]}")
            pending[fd].buffer += data
    return [child.pop() for child in children]


@pytest.mark.slow
def test_a_crowd_of_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(tmp_path), f"w{i}", str(FILES), str(BUSY_TIMEOUT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(CROWD)
    ]
    children = [_Lines(proc) for proc in procs]
    failures: list[str] = []
    try:
        for index in range(FILES):
            ready = _one_line_each(children, time.monotonic() + 120)
            assert ready == [f"ready {index}"] * CROWD
            assert not (tmp_path / f"fresh-{index}.db").exists()
            (tmp_path / f"go-{index}").touch()
            for line in _one_line_each(children, time.monotonic() + 120):
                result = json.loads(line)
                if result.get("saw_self") is not True:
                    failures.append(f"file {index}: {result}")
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)  # reaps it and closes its pipes
    assert not failures, "\n".join(failures)

    async def check(path: Path) -> list[str]:
        async with SqliteBackend(path) as store:
            return sorted(h.run_id for h in (await store.list_runs()).runs)

    for index in range(FILES):
        assert run(check(tmp_path / f"fresh-{index}.db")) == sorted(f"w{i}" for i in range(CROWD))
