"""JsonFileBackend's commit log: an acknowledged append is never dropped silently.

Only what follows the last complete commit line is a torn tail (recovered as
before, including after a real SIGKILL inside a write); damage to committed
bytes, such as the newline of the last commit line, is `CorruptRunError` naming
the run and the byte, and the file is left as it was.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.errors import CorruptRunError
from durable_agent.fsm import RunState
from durable_agent.records import Lease
from tests.backends.conftest import new_run, run, step


def _run_at_seq_3(store: JsonFileBackend, run_id: str = "r1") -> Lease:
    async def main() -> Lease:
        lease = await new_run(store, run_id)
        lease = await store.append(run_id, [step(2)], expected_seq=1, lease=lease)
        return await store.append(
            run_id, [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease
        )

    return run(main())


def _log(store: JsonFileBackend, run_id: str = "r1") -> Path:
    return Path(store.folder) / run_id / "events.jsonl"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-1] + b"X", id="newline-overwritten"),
        pytest.param(lambda data: data[:-1] + b" ", id="newline-turned-space"),
        pytest.param(lambda data: data[:-1] + b"\r", id="newline-turned-cr"),
        pytest.param(
            lambda data: data[:-1] + b'X{"schema_version":1,"seq":4', id="newline-lost-then-torn"
        ),
    ],
)
def test_a_damaged_newline_of_the_last_commit_line_is_corrupt_not_a_silent_drop(
    tmp_path: Path, damage: object
) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    lease = _run_at_seq_3(store)
    log = _log(store)
    committed = log.read_bytes()
    damaged = damage(committed)  # type: ignore[operator]
    log.write_bytes(damaged)
    position = len(committed) - 1

    async def main() -> None:
        for call in (store.get_run, store.load_run):
            with pytest.raises(CorruptRunError, match=rf"'r1'.*seq 3.*byte {position}"):
                await call("r1")
        # A writer must not cut the damaged commit off as if it were torn.
        with pytest.raises(CorruptRunError, match="'r1'"):
            await store.append("r1", [step(4)], expected_seq=3, lease=lease)
        with pytest.raises(CorruptRunError, match="'r1'"):
            await store.append("r1", [step(3)], expected_seq=2, lease=lease)

    run(main())
    assert log.read_bytes() == damaged, "a damaged log must be left as it was"
    run(store.close())


def test_a_commit_line_damaged_out_of_shape_is_corrupt_not_a_torn_event(tmp_path: Path) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    _run_at_seq_3(store)
    log = _log(store)
    data = log.read_bytes()
    last = data.rindex(b'{"commit":3')
    # Still valid JSON, no longer a commit line: it must not pass for an uncommitted event.
    damaged = data[:last] + b'{"cOmmit"' + data[last + len(b'{"commit"') :]
    log.write_bytes(damaged)

    async def main() -> None:
        with pytest.raises(CorruptRunError, match=rf"'r1'.*byte {last}"):
            await store.get_run("r1")
        with pytest.raises(CorruptRunError, match="'r1'"):
            await store.load_run("r1")

    run(main())
    assert log.read_bytes() == damaged
    run(store.close())


def test_a_last_commit_line_cut_before_its_newline_keeps_its_append(tmp_path: Path) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    lease = _run_at_seq_3(store)
    log = _log(store)
    committed = log.read_bytes()
    log.write_bytes(committed[:-1])  # every byte of the append is there but the newline

    async def main() -> None:
        assert (await store.get_run("r1")).seq == 3
        loaded = await store.load_run("r1")
        assert [e.seq for e in loaded.events] == [1, 2, 3]
        assert loaded.header.state is RunState.TOOL_EXEC
        await store.append("r1", [step(4)], expected_seq=3, lease=lease)
        again = await JsonFileBackend(store.folder).load_run("r1")
        assert [e.seq for e in again.events] == [1, 2, 3, 4]

    run(main())
    after = log.read_bytes()
    assert after.startswith(committed), "the next append restores the missing newline"
    assert after.endswith(b"}\n")
    run(store.close())


_KILLED_WRITER = """
import asyncio, sys
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.fsm import RunState
from durable_agent.records import AssistantMessage, Lease, ModelResponseEvent

folder, lease_json, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
lease = Lease.model_validate_json(lease_json)
event = ModelResponseEvent(
    seq=4, state=RunState.DONE, trigger="final_answer", model="m",
    message=AssistantMessage(content="x" * size),
)

async def main() -> None:
    store = JsonFileBackend(folder)
    print("ready", flush=True)
    await store.append("r1", [event], expected_seq=3, lease=lease)
    print("appended", flush=True)

asyncio.run(main())
"""


def _kill_inside_the_write(store: JsonFileBackend, lease: Lease, committed: int) -> int:
    """Start a writer of one huge append, SIGKILL it once its write has begun; return the size."""
    log = _log(store)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, store.folder, lease.model_dump_json(), "48000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the writer never got ready"
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while log.stat().st_size == committed:  # the signal: the write has begun
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never started writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return log.stat().st_size


def test_a_writer_killed_inside_its_append_leaves_a_torn_tail_that_is_recovered(
    tmp_path: Path,
) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    lease = _run_at_seq_3(store)
    log = _log(store)
    committed = log.read_bytes()
    torn = None
    for _ in range(5):  # the kill may land after the write finished: then try again
        size = _kill_inside_the_write(store, lease, len(committed))
        data = log.read_bytes()
        if not data.endswith(b"}\n"):
            torn = data
            break
        # The whole append made it: it counts (it may even have been fsynced). Start over.
        log.write_bytes(committed)
    assert torn is not None, "every SIGKILL landed after the write completed"
    assert len(committed) < size < len(committed) + 48_000_000

    async def main() -> None:
        assert (await store.get_run("r1")).seq == 3
        loaded = await store.load_run("r1")
        assert [e.seq for e in loaded.events] == [1, 2, 3]
        await store.append("r1", [step(4, RunState.DONE)], expected_seq=3, lease=lease)
        again = await JsonFileBackend(store.folder).load_run("r1")
        assert [e.seq for e in again.events] == [1, 2, 3, 4]

    run(main())
    after = log.read_bytes()
    assert after.startswith(committed)
    assert len(after) < len(torn), "the torn bytes were cut off by the next append"
    run(store.close())


def _event_line(seq: int, size: int) -> bytes:
    from durable_agent.records import AssistantMessage, ModelResponseEvent, encode_event

    event = ModelResponseEvent(
        seq=seq, state=RunState.MODEL_CALL, model="m", message=AssistantMessage(content="y" * size)
    )
    return encode_event(event).encode() + b"\n"


@pytest.mark.parametrize("size", [300, 700, 1000, 1500, 5000])
def test_a_torn_append_of_several_long_events_is_ignored_whatever_the_chunking(
    tmp_path: Path, size: int
) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    lease = _run_at_seq_3(store)
    log = _log(store)
    committed = log.read_bytes()
    lines = b"".join(_event_line(seq, size) for seq in (4, 5, 6))
    log.write_bytes(committed + lines + _event_line(7, size)[: size // 2])

    async def main() -> None:
        assert (await store.get_run("r1")).seq == 3
        assert len((await store.load_run("r1")).events) == 3
        await store.append("r1", [step(4)], expected_seq=3, lease=lease)
        assert len((await JsonFileBackend(store.folder).load_run("r1")).events) == 4

    run(main())
    run(store.close())


def test_uncommitted_lines_out_of_seq_order_are_corrupt(tmp_path: Path) -> None:
    store = JsonFileBackend(tmp_path / "runs")
    _run_at_seq_3(store)
    log = _log(store)
    committed = log.read_bytes()
    log.write_bytes(committed + _event_line(5, 900) + _event_line(4, 900) + b'{"sche')

    async def main() -> None:
        with pytest.raises(CorruptRunError, match=rf"'r1'.*byte {len(committed)}\b"):
            await store.get_run("r1")
        with pytest.raises(CorruptRunError, match=rf"'r1'.*byte {len(committed)}\b"):
            await store.load_run("r1")

    run(main())
    run(store.close())
