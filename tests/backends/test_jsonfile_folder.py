"""A JsonFileBackend folder with other things in it: stray files and folders are not runs,
every call works around them and leaves them alone, and `foreign_entries` names them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from durable_agent.backend import LeaseOwner
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.errors import ConfigurationError, RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import utcnow
from tests.backends.conftest import created, header, run

STRAYS = {
    "README.txt": "a file",
    "notes.txt~": "an editor's backup",
    ".DS_Store": "a hidden file",
    ".r1.swp": "an editor's swap file",
}
"""Files people and their tools leave next to the runs."""


def _cluttered(tmp_path: Path) -> JsonFileBackend:
    """A store with runs "old" (DONE, two days old) and "new" (PENDING), and clutter."""
    store = JsonFileBackend(tmp_path / "runs")
    old = utcnow() - timedelta(days=2)

    async def main() -> None:
        await store.create_run(
            header("old", state=RunState.DONE, created_at=old, updated_at=old), [created()]
        )
        await store.create_run(header("new"), [created()])

    run(main())
    root = Path(store.folder)
    for name, text in STRAYS.items():
        (root / name).write_text(text)
    (root / "backup").mkdir()  # a folder with neither header.json nor events.jsonl
    (root / "backup" / "runs.tar").write_text("a backup")
    (root / ".git").mkdir()
    return store


def _snapshot(root: Path) -> dict[str, str]:
    """Every stray file's content, by path: what no call may change."""
    return {
        str(p.relative_to(root)): p.read_text()
        for p in root.rglob("*")
        if p.is_file() and p.parts[len(root.parts)] not in ("old", "new")
    }


def test_stray_files_and_folders_do_not_break_listing_prune_or_any_call(tmp_path: Path) -> None:
    store = _cluttered(tmp_path)
    root = Path(store.folder)
    before = _snapshot(root)

    async def main() -> None:
        page = await store.list_runs()
        assert [h.run_id for h in page.runs] == ["new", "old"]
        assert page.unreadable == ()  # clutter is not a damaged run
        assert await store.foreign_entries() == (
            ".DS_Store", ".git/", ".r1.swp", "README.txt", "backup/", "notes.txt~"
        )  # fmt: skip
        assert await store.prune(older_than=utcnow() - timedelta(days=1)) == 1
        assert [h.run_id for h in (await store.list_runs()).runs] == ["new"]
        # Addressed by name, a stray is no run: nothing reads, changes or deletes it.
        for name in ("README.txt", "backup", "notes.txt~"):
            assert await store.delete_run(name) is False
            for call in (store.get_run, store.load_run):
                with pytest.raises(RunNotFoundError, match=repr(name)):
                    await call(name)
            with pytest.raises(RunNotFoundError):
                await store.acquire_lease(name, LeaseOwner.current(), ttl=30)
            with pytest.raises(RunNotFoundError):
                await store.request_cancel(name, "stop")
            with pytest.raises(ConfigurationError, match="not a run"):
                await store.create_run(header(name), [created()])
        with pytest.raises(RunNotFoundError, match="not a run"):
            await store.get_run("backup")
        assert await store.delete_run("new") is True
        assert (await store.list_runs()).runs == ()

    run(main())
    assert _snapshot(root) == before
    assert (root / "backup").is_dir()
    assert (root / ".git").is_dir()
    run(store.close())


def test_a_run_folder_missing_one_of_its_files_is_listed_as_corrupt(tmp_path: Path) -> None:
    store = JsonFileBackend(tmp_path / "runs")

    async def main() -> None:
        for run_id in ("no-log", "no-header", "good"):
            await store.create_run(header(run_id), [created()])
        (Path(store.folder) / "no-log" / "events.jsonl").unlink()
        (Path(store.folder) / "no-header" / "header.json").unlink()
        page = await store.list_runs()
        assert [h.run_id for h in page.runs] == ["good"]
        assert [(u.run_id, u.reason) for u in page.unreadable] == [
            ("no-header", "corrupt"),
            ("no-log", "corrupt"),
        ]
        assert "events.jsonl is missing" in page.unreadable[1].message
        assert await store.foreign_entries() == ()
        # Damaged runs are still runs: delete removes them.
        assert await store.delete_run("no-log") is True
        assert await store.delete_run("no-header") is True

    run(main())
    run(store.close())


def test_a_store_folder_not_yet_created_lists_nothing(tmp_path: Path) -> None:
    store = JsonFileBackend(tmp_path / "never")

    async def main() -> None:
        page = await store.list_runs()
        assert (page.runs, page.unreadable, page.next_cursor) == ((), (), None)
        assert await store.foreign_entries() == ()
        assert await store.prune(older_than=utcnow()) == 0

    run(main())
    run(store.close())
