"""SqliteBackend's writers' lock (``<db>-writer.lock``): writers of several processes take
turns on it; reads never need it; a holder that dies or forks never keeps it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durable_agent.backends._sqlite_lock import SUFFIX, WriterLock
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import StoreUnavailableError
from durable_agent.records import Lease
from tests._barriers import DEADLINE, wait_until_async
from tests.backends.conftest import new_run, run, step


@contextmanager
def held(db_path: Path) -> Iterator[int]:
    """The writers' lock of ``db_path``, held on a descriptor of our own, as by another process."""
    fd = os.open(f"{db_path}{SUFFIX}", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _free(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_reads_go_on_while_another_writer_holds_the_lock_and_a_write_times_out(
    db_path: Path,
) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, busy_timeout=0.05) as store:
            lease = await new_run(store, "r1")
            with held(db_path):
                assert (await store.get_run("r1")).seq == 1
                assert [e.seq for e in (await store.load_run("r1")).events] == [1]
                assert [h.run_id for h in (await store.list_runs()).runs] == ["r1"]
                with pytest.raises(StoreUnavailableError, match="busy_timeout"):
                    await store.append("r1", [step(2)], expected_seq=1, lease=lease)
                assert (await store.get_run("r1")).seq == 1  # nothing was stored
            await store.append("r1", [step(2)], expected_seq=1, lease=lease)
            assert (await store.get_run("r1")).seq == 2

    run(main())


def test_a_waiting_write_commits_once_the_holder_lets_go(db_path: Path) -> None:
    async def main() -> None:
        async with SqliteBackend(db_path, busy_timeout=DEADLINE) as store:
            lease = await new_run(store, "r1")
            link = store._link
            assert link is not None
            lock = link.lock
            assert lock is not None
            with held(db_path):
                waits = lock.waits
                append = asyncio.create_task(
                    store.append("r1", [step(2)], expected_seq=1, lease=lease)
                )
                await wait_until_async(
                    lambda: lock.waits > waits, awaiting="the append to wait for the lock"
                )
                assert not append.done()
            await append
            assert (await store.get_run("r1")).seq == 2
            assert _free(lock.path)  # released after the commit

    run(main())


_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # until killed
"""


def test_a_process_killed_while_holding_the_lock_never_blocks_the_store(db_path: Path) -> None:
    async def setup() -> Lease:
        async with SqliteBackend(db_path) as store:
            return await new_run(store, "r1")

    async def append(lease: Lease) -> int:
        async with SqliteBackend(db_path, busy_timeout=DEADLINE) as store:
            await store.append("r1", [step(2)], expected_seq=1, lease=lease)
            return (await store.get_run("r1")).seq

    lease = run(setup())
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"{db_path}{SUFFIX}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert not _free(f"{db_path}{SUFFIX}")
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.communicate(timeout=DEADLINE)
    assert run(append(lease)) == 2


def test_a_child_forked_while_the_lock_is_held_does_not_keep_it(db_path: Path) -> None:
    lock = WriterLock(str(db_path))
    fd = lock.acquire(timeout=DEADLINE)
    assert fd is not None
    assert fd >= 0
    go_read, go_write = os.pipe()
    up_read, up_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child outlives the parent's hold, doing nothing with the lock
        os.write(up_write, b"x")  # the fork handlers have run
        os.read(go_read, 1)
        os._exit(0)
    os.close(go_read)
    os.close(up_write)
    try:
        assert os.read(up_read, 1) == b"x"
        os.close(up_read)
        WriterLock.release(fd)
        assert _free(lock.path)
    finally:
        os.write(go_write, b"x")
        os.close(go_write)
        os.waitpid(pid, 0)


def test_without_a_lock_file_batches_run_on_sqlite_lock_alone(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "missing-dir" / "runs.db"))
    assert lock.acquire(timeout=0) == -1
    WriterLock.release(-1)  # nothing to release
