"""(g) Each backend against its own floor, 1,000 concurrent runs on Redis, linear storage.

1. Cost per transition: one run, ``N`` sequential appends of one tool-result
   event (~600 bytes of JSON, the common case), timed per append, median of
   several rounds, against the floor of the same backend doing the least it
   physically must, the same way (async, on the same event loop):

   * Redis: one round trip of the same size: ``RPUSH`` of a value as long as
     the append script's arguments, through the backend's own client and pool;
   * JSON files: one ``write`` of the same bytes (event line + commit line) to
     an ``O_APPEND`` file plus one ``fsync``, in a worker thread as the backend
     does (the synchronous cost of the same is printed too);
   * SQLite: one ``INSERT`` + ``COMMIT`` of the same row (WAL, synchronous
     FULL), in a worker thread.

   Target: append / floor <= 1.5x.
2. 1,000 concurrent runs x 10 tool turns through the real engine (`Agent`,
   `ScriptedModel`) on one event loop and one `RedisBackend` whose pool has
   50 connections: every run must finish DONE, with no connection error.
3. Stored bytes per run after K = 10, 20, 40 turns on each backend (event
   bytes plus each store's own overhead: Redis ``MEMORY USAGE`` of the run's
   keys, the JSON files' sizes, SQLite's event rows): bytes(40) / bytes(20)
   <= 2.1 means linear growth.
4. Redis Cluster (three local masters, ``redis+cluster://``): the append
   within a run's active states against the same append on the single Redis,
   in paired rounds (<= 1.2x: the hot path stays one script, one round trip;
   against an ``RPUSH`` through the cluster client it is printed only: that
   client's floor is cheaper than the single Redis's blocking pool, so the
   script's own work weighs more), and 1,000 concurrent runs through the
   engine with at most 50 calls at once: all DONE, no error, listed back by
   state.

Redis: a private ``redis-server`` on a free port when the binary is on PATH
(``--save "" --appendonly no``: the floor and the backend see the same server),
else ``DURABLE_AGENT_TEST_REDIS_URL``; without either the Redis rows are skipped.

Redis Cluster: three private ``redis-server --cluster-enabled yes`` joined by
``redis-cli --cluster create`` when both binaries are on PATH, else
``DURABLE_AGENT_TEST_REDIS_CLUSTER_URL``; without either those rows are skipped.

Run alone: ``python benchmarks/bench_backends.py [--quick] [--dir DISK]``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from _common import (
    Row,
    gated,
    info,
    median,
    run_script,
    scratch_dir,
)
from _redis_servers import redis_cluster, redis_server

from durable_agent import Agent, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.backends.jsonfile import JsonFileBackend
from durable_agent.backends.memory import MemoryBackend
from durable_agent.backends.sqlite import SqliteBackend
from durable_agent.errors import RunNotFoundError
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    Event,
    Lease,
    RunHeader,
    ToolFinishedEvent,
    ToolResultMessage,
    ToolStartedEvent,
    UserMessage,
    encode_event,
)

NAME = "g) backends"
LIMIT = 1.5
RESULT = "sunny and mild, light wind from the west, " * 12  # ~500 bytes, a typical tool result


def _result(seq: int) -> ToolFinishedEvent:
    return ToolFinishedEvent(
        seq=seq,
        state=RunState.TOOL_EXEC,
        result=ToolResultMessage(call_id=f"call_{seq}", name="weather", content=RESULT),
        duration_ms=12.5,
    )


async def _new_run(store: Backend, run_id: str) -> Lease:
    first = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))
    await store.create_run(RunHeader(run_id=run_id, seq=1), [first])
    return await store.acquire_lease(run_id, LeaseOwner.current(), ttl=60)


Call = Callable[[int], Awaitable[Any]]


async def _mean(calls: int, call: Call) -> float:
    started = time.perf_counter()
    for i in range(calls):
        await call(i)
    return (time.perf_counter() - started) / calls


async def _compare(
    calls: int, rounds: int, append: Call, floor: Call
) -> tuple[float, float, float]:
    """Median seconds per append, per floor call, and median of their per-round ratio.

    Rounds alternate append and floor, so a neighbour's load on this shared
    machine hits both sides of a ratio alike.
    """
    await _mean(20, append)  # warm up: connections, scripts, caches
    await _mean(20, floor)
    appends, floors, ratios = [], [], []
    for _ in range(rounds):
        a = await _mean(calls, append)
        f = await _mean(calls, floor)
        appends.append(a)
        floors.append(f)
        ratios.append(a / f)
    return median(appends), median(floors), median(ratios)


async def _appender(store: Backend, calls: int) -> Call:
    """Appends one prepared tool-result event per call to one run."""
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    lease = await _new_run(store, run_id)
    # Built before the clock starts: the caller's work, not the store's.
    events = [[_result(seq)] for seq in range(2, calls + 40)]
    state: dict[str, Any] = {"lease": lease, "seq": 1}

    async def one(_: int) -> None:
        seq = state["seq"] + 1
        state["lease"] = await store.append(
            run_id, events[seq - 2], expected_seq=seq - 1, lease=state["lease"]
        )
        state["seq"] = seq

    return one


# -- the floors ----------------------------------------------------------------------------


def _event_line() -> bytes:
    return encode_event(_result(2)).encode() + b"\n"


def _fsync_append(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.fsync(fd)


_COMMIT_LINE = (
    b'{"commit":2,"state":"TOOL_EXEC","updated_at":"2026-01-01T00:00:00.000000+00:00",'
    b'"generation":1,"expires_at":1767225600.0,"release":false}\n'
)


def _file_floor(fd: int) -> Call:
    """One append+fsync of the bytes a JsonFileBackend append writes, in a worker thread."""
    data = _event_line() + _COMMIT_LINE
    return lambda _: asyncio.to_thread(_fsync_append, fd, data)


def _sqlite_floor(conn: sqlite3.Connection) -> Call:
    """One INSERT + COMMIT of the same row (WAL, synchronous FULL), in a worker thread."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE events (run_id TEXT, seq INTEGER, body TEXT, PRIMARY KEY (run_id, seq))"
    )
    body = _event_line().decode()
    seqs = iter(range(1, 10**9))

    def insert() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES ('r', ?, ?)", (next(seqs), body))
        conn.execute("COMMIT")

    return lambda _: asyncio.to_thread(insert)


def _redis_floor(store: Any) -> Call:
    """One RPUSH round trip as long as the append script's request, on the backend's pool."""
    client = store._client()
    value = _event_line() + b"x" * 160  # the event plus the script's sha, keys and control
    key = f"{store.prefix}floor"
    return lambda _: client.rpush(key, value)


def _cluster_floor(store: Any) -> Call:
    """The same RPUSH through the backend's cluster client, taking a turn as its calls do."""
    link = store._connect()
    value = _event_line() + b"x" * 160
    key = f"{store.prefix}{{floor}}:list"

    async def push(_: int) -> None:
        async with link.turn():
            await link.client.rpush(key, value)

    return push


# -- 1,000 runs through the engine ----------------------------------------------------------


async def _many_runs(url: str, runs: int, turns: int) -> list[Row]:
    from durable_agent.backends.redis import RedisBackend

    async def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    script: list[Any] = [ToolCall("weather", {"city": f"city{i}"}) for i in range(turns)]
    script.append("done")
    store = RedisBackend(url, prefix=f"many-{uuid.uuid4().hex[:6]}:", max_connections=50)
    kind = "redis cluster: " if store.cluster else ""
    agent = Agent(ScriptedModel(script), db=store, tools=[weather], retry=1)
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(agent.do_async(Task("weather?", run_id=f"run-{i}")) for i in range(runs)),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    client = store._client()
    if store.cluster:
        opened = max(len(node._connections) for node in client.get_nodes())  # type: ignore[union-attr]
        where = "per master"
    else:
        pool = client.connection_pool  # type: ignore[union-attr]
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        where = "pool max 50"
    # A failed run may never have been created: count it as not DONE, and go on
    # to the other rows, so a failure is a MISS in the table rather than a crash.
    found = await asyncio.gather(
        *(store.get_run(f"run-{i}") for i in range(runs)), return_exceptions=True
    )
    finished = [h for h in found if isinstance(h, RunHeader) and h.state is RunState.DONE]
    done = len(finished)
    missing = sum(isinstance(h, RunNotFoundError) for h in found)
    sample = finished[:20]
    transitions = sum(h.seq for h in sample) / len(sample) if sample else 0.0
    listed, cursor, started_listing = 0, None, time.perf_counter()
    while True:
        page = await store.list_runs(states=[RunState.DONE], limit=100, cursor=cursor)
        listed += len(page.runs)
        if (cursor := page.next_cursor) is None:
            break
    listing = time.perf_counter() - started_listing
    await store.close()
    label = f"{kind}{runs} concurrent runs x {turns} tool turns (engine, 50-connection pool)"
    return [
        Row(
            NAME, f"{label}: finished DONE", f"{done} of {runs}", f"{runs} of {runs}", done == runs
        ),
        Row(NAME, f"{label}: errors", _failures(errors, missing), "0", not errors),
        info(
            NAME,
            f"{label}: wall time",
            f"{elapsed:.1f} s, {runs * transitions / elapsed:,.0f} transitions/s",
        ),
        info(NAME, f"{label}: connections opened", f"{opened} ({where})"),
        Row(
            NAME,
            f"{label}: listed back as DONE, 100 a page",
            f"{listed} in {listing * 1000:.0f} ms",
            f"{runs}",
            listed == runs,
        ),
    ]


def _failures(errors: list[BaseException], missing: int) -> str:
    """How many runs failed, of which kinds, the first error's message, and runs never created."""
    if not errors:
        return "0"
    kinds = sorted({type(e).__name__ for e in errors})
    first = str(errors[0]).splitlines()[0] if str(errors[0]) else ""
    never = f"; {missing} never created" if missing else ""
    return f"{len(errors)} {kinds}{never}; first: {type(errors[0]).__name__}: {first[:120]}"


# -- stored bytes -------------------------------------------------------------------------


async def _grow(store: Backend, run_id: str, turns: int) -> None:
    lease = await _new_run(store, run_id)
    seq = 1
    for turn in range(turns):
        events: list[Event] = [
            ToolStartedEvent(seq=seq + 1, state=RunState.TOOL_EXEC, call_id=f"c{turn}", name="w"),
            _result(seq + 2),
        ]
        lease = await store.append(run_id, events, expected_seq=seq, lease=lease)
        seq += 2


async def _stored_bytes(kind: str, store: Backend, run_id: str) -> int:
    if isinstance(store, JsonFileBackend):
        folder = Path(store.folder) / run_id
        return sum(p.stat().st_size for p in folder.iterdir())
    if isinstance(store, SqliteBackend):
        return int(
            await store._read(
                lambda db: db.execute(
                    "SELECT sum(length(body)) FROM events WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
            )
        )
    client = store._client()  # type: ignore[attr-defined]
    keys = [f"{store.prefix}{{{run_id}}}:{part}" for part in ("header", "events")]  # type: ignore[attr-defined]
    return sum([int(await client.memory_usage(key)) for key in keys])


async def _growth(kind: str, store: Backend) -> list[Row]:
    sizes = {}
    for turns in (10, 20, 40):
        run_id = f"grow-{turns}"
        await _grow(store, run_id, turns)
        sizes[turns] = await _stored_bytes(kind, store, run_id)
    ratio = sizes[40] / sizes[20]
    return [
        info(
            NAME,
            f"{kind}: stored bytes at 10 / 20 / 40 turns",
            " / ".join(f"{sizes[k]:,}" for k in (10, 20, 40)) + f" B ({sizes[40] // 40:,} B/turn)",
        ),
        gated(NAME, f"{kind}: bytes(40 turns) / bytes(20 turns)", ratio, "x", 2.1, ".2f"),
    ]


# -- the benchmark ---------------------------------------------------------------------------


async def _measure_cluster(quick: bool, url: str | None, single: str | None) -> list[Row]:
    """The cluster rows; ``single`` is the single Redis to compare the hot path with."""
    if url is None:
        reason = (
            "skipped: no redis-server/redis-cli on PATH, no DURABLE_AGENT_TEST_REDIS_CLUSTER_URL"
        )
        return [info(NAME, "redis cluster", reason)]
    from durable_agent.backends.redis import RedisBackend

    calls, rounds = (200, 5) if quick else (300, 9)
    total = calls * (rounds + 1)
    store = RedisBackend(url, prefix=f"bench-{uuid.uuid4().hex[:6]}:")
    cost, floor, ratio = await _compare(
        calls, rounds, await _appender(store, total), _cluster_floor(store)
    )
    # A cheaper client floor than the single Redis's blocking pool makes the same
    # script weigh more here; the gate is that the hot path stays one round trip.
    rows = [
        info(
            NAME,
            "redis cluster: append script / RPUSH round trip",
            f"{cost * 1e6:.0f} / "
            f"{floor * 1e6:.0f} us = {ratio:.2f}x (the script's own ~12 us of Lua included)",
        ),
    ]
    if single is not None:
        other = RedisBackend(single, prefix=f"bench-{uuid.uuid4().hex[:6]}:")
        cost, alone, ratio = await _compare(
            calls, rounds, await _appender(store, total), await _appender(other, total)
        )
        rows.append(
            info(
                NAME,
                "redis cluster: append / the same append on a single Redis",
                f"{cost * 1e6:.0f} / {alone * 1e6:.0f} us",
            )
        )
        rows.append(
            gated(
                NAME, "redis cluster: append / single-Redis append (paired)", ratio, "x", 1.2, ".2f"
            )
        )
        await other.close()
    await store.close()
    rows += await _many_runs(url, 1000, 10 if not quick else 5)
    return rows


async def _measure(quick: bool, folder: Path, url: str | None) -> list[Row]:
    calls, rounds = (200, 5) if quick else (300, 9)
    rows: list[Row] = []

    memory = MemoryBackend()
    cost = await _mean(calls, await _appender(memory, calls))
    rows.append(info(NAME, "memory: append of one tool result", f"{cost * 1e6:.1f} us (no floor)"))

    sqlite = SqliteBackend(folder / "bench.db")
    with closing(
        sqlite3.connect(folder / "floor.db", isolation_level=None, check_same_thread=False)
    ) as conn:
        total = calls * (rounds + 1)
        cost, floor, ratio = await _compare(
            calls, rounds, await _appender(sqlite, total), _sqlite_floor(conn)
        )
    rows += _pair("sqlite", "append / INSERT+COMMIT floor (threaded)", cost, floor, ratio)
    rows += await _growth("sqlite", sqlite)
    await sqlite.close()

    files = JsonFileBackend(folder / "runs")
    fd = os.open(folder / "floor.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        cost, floor, ratio = await _compare(
            calls, rounds, await _appender(files, calls * (rounds + 1)), _file_floor(fd)
        )
        data = _event_line() + _COMMIT_LINE
        sync_floor = await _mean(calls, lambda _: _sync(_fsync_append, fd, data))
    finally:
        os.close(fd)
    rows += _pair("jsonfile", "append / append+fsync floor (threaded)", cost, floor, ratio)
    rows.append(
        info(NAME, "jsonfile: the same append+fsync, synchronous", f"{sync_floor * 1e6:.0f} us")
    )
    rows += await _growth("jsonfile", files)
    await files.close()

    if url is None:
        reason = "skipped: no redis-server on PATH and no DURABLE_AGENT_TEST_REDIS_URL"
        return [*rows, info(NAME, "redis", reason)]
    from durable_agent.backends.redis import RedisBackend

    redis = RedisBackend(url, prefix=f"bench-{uuid.uuid4().hex[:6]}:")
    cost, floor, ratio = await _compare(
        calls, rounds, await _appender(redis, calls * (rounds + 1)), _redis_floor(redis)
    )
    rows += _pair("redis", "append script / RPUSH round trip of the same size", cost, floor, ratio)
    rows += await _growth("redis", redis)
    await redis.close()
    rows += await _many_runs(url, 1000, 10 if not quick else 5)
    return rows


async def _sync(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


def _pair(kind: str, what: str, cost: float, floor: float, ratio: float) -> list[Row]:
    return [
        info(NAME, f"{kind}: {what}", f"{cost * 1e6:.0f} / {floor * 1e6:.0f} us"),
        gated(NAME, f"{kind}: append / floor (median of paired rounds)", ratio, "x", LIMIT, ".2f"),
    ]


def run(quick: bool) -> list[Row]:
    with scratch_dir() as folder, redis_server(folder) as url:
        rows = asyncio.run(_measure(quick, folder, url))
        with scratch_dir() as other, redis_cluster(other) as cluster_url:
            rows += asyncio.run(_measure_cluster(quick, cluster_url, url))
    return rows


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
