"""What only JsonFileBackend promises: files a person can read, torn writes ignored,
damage reported without repair, and run ids that never leave the folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.errors import ConfigurationError, CorruptRunError
from durable_agent.fsm import RunState
from durable_agent.records import Lease, decode_event, decode_header
from tests.backends.conftest import created, header, new_run, run, step


def _store(tmp_path: Path) -> JsonFileBackend:
    return JsonFileBackend(tmp_path / "runs")


def _run_at_seq_3(store: JsonFileBackend, run_id: str = "r1") -> Lease:
    async def main() -> Lease:
        lease = await new_run(store, run_id)
        lease = await store.append(run_id, [step(2)], expected_seq=1, lease=lease)
        return await store.append(
            run_id, [step(3, RunState.TOOL_EXEC)], expected_seq=2, lease=lease
        )

    return run(main())


def test_a_run_is_a_header_file_and_a_log_of_json_lines(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _run_at_seq_3(store)
    folder = tmp_path / "runs" / "r1"
    assert sorted(p.name for p in folder.iterdir()) == ["events.jsonl", "header.json"]
    stored_header = decode_header("r1", (folder / "header.json").read_text())
    assert stored_header.run_id == "r1"
    lines = (folder / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON on its own
    commits = [e for e in events if "commit" in e]
    assert [c["commit"] for c in commits] == [1, 2, 3]
    assert [c["state"] for c in commits] == ["PENDING", "MODEL_CALL", "TOOL_EXEC"]
    records = [line for line in lines if '"commit"' not in line]
    assert [decode_event("r1", i, line).seq for i, line in enumerate(records, 1)] == [1, 2, 3]
    run(store.close())


def test_a_torn_last_append_is_ignored_then_cut_off_without_touching_earlier_events(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    lease = _run_at_seq_3(store)
    log = tmp_path / "runs" / "r1" / "events.jsonl"
    committed = log.read_bytes()
    # A process killed inside its write: one whole event line, half of the next.
    torn = b'{"schema_version":1,"seq":4,"state":"DONE","kind":"transition"}\n{"schema_ver'
    log.write_bytes(committed + torn)

    async def main() -> None:
        loaded = await store.load_run("r1")
        assert [e.seq for e in loaded.events] == [1, 2, 3]
        assert (await store.get_run("r1")).state is RunState.TOOL_EXEC
        await store.append("r1", [step(4, RunState.MODEL_CALL)], expected_seq=3, lease=lease)
        again = await store.load_run("r1")
        assert [e.seq for e in again.events] == [1, 2, 3, 4]
        assert again.events[-1].state is RunState.MODEL_CALL

    run(main())
    after = log.read_bytes()
    assert after.startswith(committed)
    assert torn not in after
    run(store.close())


def test_a_half_written_line_alone_is_ignored(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _run_at_seq_3(store)
    log = tmp_path / "runs" / "r1" / "events.jsonl"
    log.write_bytes(log.read_bytes() + b'{"commit":4,"sta')
    assert run(store.get_run("r1")).seq == 3
    assert len(run(store.load_run("r1")).events) == 3
    run(store.close())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda lines: lines.__setitem__(2, b"{garbage"), id="event-line-garbage"),
        pytest.param(lambda lines: lines.__setitem__(2, b""), id="event-line-emptied"),
        pytest.param(
            lambda lines: lines.__setitem__(1, b'{"commit":"one"}'), id="commit-line-damaged"
        ),
        pytest.param(lambda lines: lines.insert(4, b"\x00\x00\x00"), id="nul-bytes-inserted"),
    ],
)
def test_a_corrupted_line_fails_its_run_and_leaves_the_file_as_it_was(
    tmp_path: Path, damage: object
) -> None:
    store = _store(tmp_path)
    lease = _run_at_seq_3(store, "bad")
    good = _run_at_seq_3(store, "good")
    log = tmp_path / "runs" / "bad" / "events.jsonl"
    lines = log.read_bytes().split(b"\n")
    damage(lines)  # type: ignore[operator]
    log.write_bytes(b"\n".join(lines))
    damaged = log.read_bytes()

    async def main() -> None:
        with pytest.raises(CorruptRunError, match="'bad'"):
            await store.load_run("bad")
        # Like a damaged SQLite row, a damaged line in the middle does not stop
        # appends (they read only the last commit); it is never rewritten either.
        await store.append("bad", [step(4)], expected_seq=3, lease=lease)
        with pytest.raises(CorruptRunError):
            await store.load_run("bad")
        await store.append("good", [step(4)], expected_seq=3, lease=good)
        assert {h.run_id for h in (await store.list_runs()).runs} <= {"bad", "good"}
        report = await store.migrate()  # names the damaged run, leaves it as it is
        assert report.runs_rewritten == 0
        assert any(step.startswith("left run 'bad' as it is") for step in report.steps)

    run(main())
    assert log.read_bytes().startswith(damaged), "a damaged log must never be rewritten"
    run(store.close())


@pytest.mark.parametrize(
    "run_id",
    ["../escape", "a/b", "/etc/passwd", "a\\b", "nul\0byte", ".hidden", "..", "", "tab\tid"],
)
def test_run_ids_that_could_leave_the_folder_are_refused(tmp_path: Path, run_id: str) -> None:
    store = JsonFileBackend(tmp_path / "store" / "runs")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="run id"):
            await store.create_run(header(run_id), [created()])
        for call in (store.get_run, store.load_run, store.delete_run):
            with pytest.raises(ConfigurationError, match="run id"):
                await call(run_id)

    run(main())
    outside = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert outside == [], f"files were written: {outside}"
    run(store.close())


def test_a_missing_header_file_makes_only_that_run_corrupt(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _run_at_seq_3(store, "bad")
    _run_at_seq_3(store, "good")
    (tmp_path / "runs" / "bad" / "header.json").unlink()

    async def main() -> None:
        with pytest.raises(CorruptRunError, match=r"header\.json is missing"):
            await store.get_run("bad")
        assert [h.run_id for h in (await store.list_runs()).runs] == ["good"]
        assert await store.delete_run("bad") is True

    run(main())
    run(store.close())


def test_leftovers_of_killed_creates_are_invisible(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _run_at_seq_3(store)
    leftover = tmp_path / "runs" / ".create-0123"
    leftover.mkdir()
    (leftover / "header.json").write_text("{}")
    page = run(store.list_runs())
    assert [h.run_id for h in page.runs] == ["r1"]
    run(store.close())


@pytest.mark.parametrize("folder", [42, b"runs", ""])
def test_bad_folder_argument_raises_configuration_error(folder: object) -> None:
    with pytest.raises(ConfigurationError, match="folder"):
        JsonFileBackend(folder)  # type: ignore[arg-type]


def test_a_cancelled_append_still_releases_the_run_and_is_either_whole_or_absent(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)

    async def main() -> None:
        lease = await new_run(store, "r1")
        for attempt in range(20):
            seq = (await store.get_run("r1")).seq
            task = asyncio.create_task(
                store.append("r1", [step(seq + 1)], expected_seq=seq, lease=lease)
            )
            for _ in range(attempt % 3):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                lease = await task
            # The run is not left locked: the next append goes through at once.
            seq = (await store.get_run("r1")).seq
            lease = await asyncio.wait_for(
                store.append("r1", [step(seq + 1)], expected_seq=seq, lease=lease), timeout=5
            )
        loaded = await store.load_run("r1")
        assert [e.seq for e in loaded.events] == list(range(1, loaded.header.seq + 1))

    run(main())
    run(store.close())
