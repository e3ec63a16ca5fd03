"""``durable-agent migrate`` on a JSON-file store: SIGKILLed half-way, and beside a live writer.

The store is the v1 JSON-file folder (``tests/data/v1/jsonfile``) with its DONE
run copied many times. A migration killed once some runs show migrated (a
store state is the barrier) must leave every run loading exactly as before,
and a re-run must finish the job. A writer process appending to the runs
while they are migrated must never be refused or lose an acknowledged event:
the migration takes the same per-run lock, and a writer that waited on a
replaced log appends to the new one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.records import SCHEMA_VERSION, StoredRun
from tests._barriers import wait_for_path, wait_until
from tests.migrations import _migrate_helpers as helpers

DATA = Path(__file__).parent.parent / "data" / "v1" / "jsonfile"
PREFIX = f'{{"schema_version":{SCHEMA_VERSION},'.encode()


def grow(folder: Path, copies: int) -> list[str]:
    """Copy the v1 run ``done-1`` under new ids; return every run id."""
    shutil.copytree(DATA, folder)
    header = (folder / "done-1" / "header.json").read_text()
    for i in range(copies):
        run_id = f"copy-{i:04d}"
        shutil.copytree(folder / "done-1", folder / run_id)
        (folder / run_id / "header.json").write_text(
            header.replace('"run_id":"done-1"', f'"run_id":"{run_id}"')
        )
    return sorted(p.name for p in folder.iterdir())


def migrated(folder: Path) -> int:
    """Runs whose header is at this version (the last file a run's migration replaces)."""
    count = 0
    for run in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += (run / "header.json").read_bytes().startswith(PREFIX)
    return count


def all_current(folder: Path) -> bool:
    """Every record of every run is stored at this version (commit lines are no records)."""
    for run in folder.iterdir():
        if not (run / "header.json").read_bytes().startswith(PREFIX):
            return False
        for line in (run / "events.jsonl").read_bytes().splitlines():
            if not (line.startswith(b'{"commit":') or line.startswith(PREFIX)):
                return False
    return True


def load_all(folder: Path, run_ids: list[str]) -> dict[str, StoredRun]:
    return helpers.load_all(lambda: JsonFileBackend(folder), run_ids)


def migrate_command(folder: Path) -> list[str]:
    return helpers.migrate_command(f"file://{folder}")


def test_a_jsonfile_migration_killed_half_way_leaves_every_run_readable_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "runs"
    run_ids = grow(folder, 250)
    before = load_all(folder, run_ids)

    proc = subprocess.Popen(
        migrate_command(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: migrated(folder) > 0, awaiting="the first migrated run",
                   processes=[proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    half = migrated(folder)
    assert 0 < half < len(run_ids), "the kill should land half-way"
    assert load_all(folder, run_ids) == before  # half-migrated reads as unmigrated

    rerun = subprocess.run(migrate_command(folder), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["supported"] is True
    assert report["runs_checked"] == len(run_ids)
    assert report["runs_rewritten"] == len(run_ids) - half
    assert all_current(folder)
    assert load_all(folder, run_ids) == before
    assert sorted(p.name for p in folder.iterdir()) == run_ids  # nothing lost, nothing added

    again = subprocess.run(migrate_command(folder), capture_output=True, text=True, timeout=600)
    assert json.loads(again.stdout)["runs_rewritten"] == 0


WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from durable_agent.backend import LeaseOwner
    from durable_agent.backends.jsonfile import JsonFileBackend
    from durable_agent.testing.conformance import step

    folder, run_ids, ready, stop, acked = sys.argv[1], sys.argv[2].split(","), *sys.argv[3:]

    async def main():
        async with JsonFileBackend(folder) as db:
            leases, seqs = {}, {}
            for run_id in run_ids:
                leases[run_id] = await db.acquire_lease(run_id, LeaseOwner.current(), ttl=300)
                seqs[run_id] = (await db.get_run(run_id)).seq
            with open(acked, "a") as out:
                rounds = 0
                while rounds < 3 or not os.path.exists(stop):
                    for run_id in run_ids:
                        seq = seqs[run_id] + 1
                        leases[run_id] = await db.append(
                            run_id, [step(seq)], expected_seq=seq - 1, lease=leases[run_id]
                        )
                        seqs[run_id] = seq
                        out.write(json.dumps([run_id, seq]) + "\\n")
                        out.flush()
                    rounds += 1
                    if rounds == 1:
                        open(ready, "w").close()

    asyncio.run(main())
    """
)


def test_a_jsonfile_migration_beside_a_live_writer_refuses_no_append_and_loses_none(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "runs"
    run_ids = grow(folder, 200)
    written = [f"copy-{i:04d}" for i in range(0, 200, 10)]  # spread over the migration
    ready, stop, acked = tmp_path / "ready", tmp_path / "stop", tmp_path / "acked.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), ",".join(written), str(ready), str(stop),
         str(acked)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_path(ready, awaiting="the writer's first appends", processes=[writer])
        migration = subprocess.run(
            migrate_command(folder), capture_output=True, text=True, timeout=600
        )
        assert migration.returncode == 0, migration.stderr
        stop.touch()
        _, err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0, err  # no append refused (a replaced log is locked anew)
    report = json.loads(migration.stdout)
    assert report["runs_rewritten"] == len(run_ids)

    runs = load_all(folder, run_ids)
    for line in acked.read_text().splitlines():
        run_id, seq = json.loads(line)
        assert runs[run_id].header.seq >= seq  # every acknowledged append is stored
        assert runs[run_id].events[seq - 1].seq == seq
    assert all_current(folder)
