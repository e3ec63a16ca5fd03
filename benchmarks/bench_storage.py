"""(c) Stored bytes grow linearly with the conversation.

One run of K = 10, 100, 200 tool turns, each tool call's arguments and each
tool result about 500 bytes, on a fresh `SqliteBackend` file per K. Measured:

* ``raw``: the message payload itself: the task text, each call's arguments
  as compact JSON, each result's text and the final answer.
* ``events``: the bytes of the run's event JSON as the store keeps it.
* ``file``: the database file after the backend is closed and
  ``PRAGMA wal_checkpoint(TRUNCATE)`` folded the WAL back (the WAL is then
  empty), and ``file-vacuumed``: after ``VACUUM``. SQLite allocates whole
  pages (usually 4 KiB) and keeps freed pages on a freelist instead of
  shrinking the file, so the checkpointed size is what a user sees on disk,
  and the vacuumed size is the bytes actually in use (free pages removed,
  pages repacked). Both include a fixed cost: the schema and the first page
  of each table and index.

Targets: file(200) / file(100) <= 2.1 (linear, not quadratic, growth) and
file(100) / raw(100) <= 3x, on the checkpointed file (what the disk holds;
an append-only log leaves no free pages, which the report shows); the same
ratios of the event JSON have the same targets. The marginal ratio (bytes per
extra raw byte between K=10 and K=200) leaves the fixed cost out; ``dbstat``
shows which table or index holds the bytes.

Run alone: ``python benchmarks/bench_storage.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import string
from dataclasses import dataclass
from pathlib import Path

from _common import (
    Row,
    event_json_bytes,
    gated,
    info,
    open_sqlite,
    run_script,
    scratch_dir,
)

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.records import AssistantMessage, StoredRun, ToolResultMessage
from durable_agent.run import RunContext

NAME = "c) storage"
MESSAGE_BYTES = 500
TURN_COUNTS = (10, 100, 200)
TARGET_GROWTH = 2.1
TARGET_OVERHEAD = 3.0

_RANDOM = random.Random(20240601)


def text_of(size: int) -> str:
    """Printable text of ``size`` bytes that SQLite cannot store in less."""
    return "".join(_RANDOM.choices(string.ascii_letters + string.digits + " ", k=size))


def arguments_of_size(size: int) -> dict[str, str]:
    """Tool arguments whose compact JSON is ``size`` bytes."""
    overhead = len(json.dumps({"text": ""}, separators=(",", ":")))
    return {"text": text_of(size - overhead)}


async def summarize(text: str) -> str:
    """The tool: returns a result of MESSAGE_BYTES bytes."""
    return text_of(MESSAGE_BYTES)


def raw_payload(stored: StoredRun) -> int:
    """Bytes of what the conversation says, without any record structure."""
    total = 0
    for message in RunContext.from_stored(stored).messages:
        if isinstance(message, AssistantMessage):
            total += len((message.content or "").encode())
            for call in message.tool_calls:
                total += len(json.dumps(call.arguments, separators=(",", ":")).encode())
        elif isinstance(message, ToolResultMessage):
            total += len(message.content.encode())
        else:
            total += len(message.content.encode())
    return total


@dataclass(frozen=True, slots=True)
class Sizes:
    turns: int
    events: int
    raw: int
    event_json: int
    file: int
    free_pages: int
    page_size: int
    file_vacuumed: int
    objects: list[tuple[str, int, int, int]]
    """Per table/index (checkpointed file): name, bytes of its pages, payload, unused."""


def file_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def space_by_object(db: sqlite3.Connection) -> list[tuple[str, int, int, int]]:
    """Where the file's bytes are, from SQLite's ``dbstat`` table (empty if not compiled in)."""
    try:
        rows = db.execute(
            "SELECT name, SUM(pgsize), SUM(payload), SUM(unused) FROM dbstat "
            "GROUP BY name ORDER BY SUM(pgsize) DESC"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    return [(str(n), int(size), int(payload), int(unused)) for n, size, payload, unused in rows]


def space_rows(sizes: Sizes) -> list[Row]:
    """Rows for the two largest objects of the file, then the rest summed."""
    if not sizes.objects:
        return [info(NAME, f"K={sizes.turns} file by object", "dbstat not available")]
    rows = [
        info(
            NAME,
            f"K={sizes.turns} {name}: pages (payload, unused)",
            f"{size:,} B ({payload:,}, {unused:,})",
        )
        for name, size, payload, unused in sizes.objects[:2]
    ]
    rest = sizes.objects[2:]
    if rest:
        rows.append(
            info(
                NAME,
                f"K={sizes.turns} {len(rest)} other tables/indexes, one page each or more",
                f"{sum(r[1] for r in rest):,} B",
            )
        )
    return rows


async def one_run(path: Path, turns: int) -> StoredRun:
    script: list[str | ToolCall] = [
        ToolCall("summarize", arguments_of_size(MESSAGE_BYTES)) for _ in range(turns)
    ]
    script.append("All done.")
    backend = open_sqlite(path)
    try:
        agent = Agent(ScriptedModel(script), db=backend, retry=1, tools=[summarize])
        output = await agent.do_async(Task("Summarize the documents."), return_output=True)
        return await backend.load_run(output.run_id)
    finally:
        await backend.close()


def measure(turns: int) -> Sizes:
    with scratch_dir() as tmp:
        path = tmp / "storage.db"
        stored = asyncio.run(one_run(path, turns))
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            free_pages = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            checkpointed = file_bytes(path)
            objects = space_by_object(db)
            db.execute("VACUUM")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            vacuumed = file_bytes(path)
        finally:
            db.close()
    return Sizes(
        turns=turns,
        events=len(stored.events),
        raw=raw_payload(stored),
        event_json=event_json_bytes(stored),
        file=checkpointed,
        free_pages=free_pages,
        page_size=page_size,
        file_vacuumed=vacuumed,
        objects=objects,
    )


def run(quick: bool) -> list[Row]:
    # The sizes are deterministic and cheap to measure, so --quick keeps all of them.
    sizes = {k: measure(k) for k in TURN_COUNTS}
    rows: list[Row] = []
    for k, s in sizes.items():
        rows.append(
            info(
                NAME,
                f"K={k} ({s.events} events): raw / event JSON / file / file-vacuumed",
                f"{s.raw:,} / {s.event_json:,} / {s.file:,} / {s.file_vacuumed:,} B",
            )
        )
    k10, k100, k200 = sizes[10], sizes[100], sizes[200]
    rows += [
        info(NAME, "free pages after checkpoint, K=200", f"{k200.free_pages} x {k200.page_size} B"),
        *space_rows(k100),
        gated(NAME, "file(200) / file(100)", k200.file / k100.file, "", TARGET_GROWTH, ".2f"),
        gated(
            NAME,
            "event JSON(200) / event JSON(100)",
            k200.event_json / k100.event_json,
            "",
            TARGET_GROWTH,
            ".2f",
        ),
        info(
            NAME,
            "file-vacuumed(200) / file-vacuumed(100)",
            f"{k200.file_vacuumed / k100.file_vacuumed:.2f}",
        ),
        gated(NAME, "file(100) / raw(100)", k100.file / k100.raw, "x", TARGET_OVERHEAD, ".2f"),
        gated(
            NAME,
            "event JSON(100) / raw(100)",
            k100.event_json / k100.raw,
            "x",
            TARGET_OVERHEAD,
            ".2f",
        ),
        info(
            NAME,
            "marginal file bytes per raw byte, K=10 -> 200",
            f"{(k200.file - k10.file) / (k200.raw - k10.raw):.2f}x",
        ),
    ]
    return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
