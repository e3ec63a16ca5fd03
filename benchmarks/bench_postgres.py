"""(i) PostgreSQL: an append against one raw INSERT+COMMIT, and group commit's throughput.

1. Cost per transition: one run, ``N`` sequential appends of one tool-result
   event (~600 bytes of JSON) through `PostgresBackend`, against the floor:
   one raw psycopg ``INSERT`` of the same row in autocommit (one statement,
   one commit, one round trip), on a connection with the same settings
   (``synchronous_commit = on``), on the same event loop. The two take turns
   call by call; the ratio of the medians of the single calls is gated.
   Target <= 1.3x. The same floor as an explicit ``BEGIN; INSERT; COMMIT``
   (what most code writes, three round trips) is printed too, and where the
   difference goes: the same turns without the WAL flush, and the backend's
   statement sent by hand (its server-side cost: a header update and an
   event insert, where the floor inserts one row).
2. Group commit: ``R`` runs appending at once through one backend (one writer
   connection), appends per second, against 32 parallel connections each
   doing its own raw ``INSERT`` + commit as fast as it can. Target: at least
   as many appends per second as the 32 connections (>= 1.0x).
3. Claim latency: `PostgresBackend.claim_runs` (one run at a time, as a
   worker with one free slot claims) with 2·10^4 and 10^6 stored runs (2·10^5
   in quick mode), of which 10^4 are waiting and the rest finished, and with
   10^4 more runs in flight (a live lease of another host); p50 and p99 over
   the claims (and with 10^4 in flight, every claim a sweep for lapsed
   leases, which must not step over them either). Target p99 <= 10 ms: it
   must stay flat as finished runs pile up and as runs in flight grow, since
   the claim reads the front of the partial index of runs nobody holds. (The
   runs are bulk-loaded with one ``INSERT ... SELECT``, then ``VACUUM
   ANALYZE``.) The same at both sizes
   with a cap: 5,000 runs in flight in a queue with ``max_running``, which
   every claim counts (from one queue's range of ``runs_placed``); and that
   capped store again with every claim a sweep for lapsed leases (a link makes
   one a second), which must not step over the 5,000 live leases either.

Uses ``DURABLE_AGENT_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``) and a schema of its own,
dropped afterwards; without a reachable server the rows are skipped.

Run alone: ``python benchmarks/bench_postgres.py [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from _common import Row, gated, info, median, run_script

from durable_agent.backend import Backend, LeaseOwner
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    Lease,
    RunHeader,
    ToolFinishedEvent,
    ToolResultMessage,
    UserMessage,
    encode_event,
)

NAME = "i) postgres"
URL = os.environ.get(
    "DURABLE_AGENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
LIMIT = 1.3
RESULT = "sunny and mild, light wind from the west, " * 12  # ~500 bytes, a typical tool result


def _result(seq: int) -> ToolFinishedEvent:
    return ToolFinishedEvent(
        seq=seq,
        state=RunState.TOOL_EXEC,
        result=ToolResultMessage(call_id=f"call_{seq}", name="weather", content=RESULT),
        duration_ms=12.5,
    )


async def new_run(store: Backend, run_id: str, **fields: Any) -> Lease:
    """Create a run at seq 1 and lease it for a minute."""
    first = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="hi"),))
    await store.create_run(RunHeader(run_id=run_id, seq=1, **fields), [first])
    return await store.acquire_lease(run_id, LeaseOwner.current(), ttl=60)


class _Appender:
    """Appends the next prepared tool-result event to one run per call."""

    def __init__(self, store: Backend, run_id: str, lease: Lease, calls: int) -> None:
        self.store, self.run_id, self.lease, self.seq = store, run_id, lease, 1
        # Built before the clock starts: the caller's work, not the store's.
        self.events = [[_result(seq)] for seq in range(2, calls + 2)]

    async def __call__(self) -> None:
        self.lease = await self.store.append(
            self.run_id, self.events[self.seq - 1], expected_seq=self.seq, lease=self.lease
        )
        self.seq += 1


async def _per_call(calls: int, call: Any) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls


async def _floor_connection(schema: str) -> Any:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(URL, autocommit=True)
    await conn.execute("SET synchronous_commit = on")
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.floor (run_id TEXT, seq INTEGER, body TEXT,"
        " PRIMARY KEY (run_id, seq))"
    )
    return conn


def _insert(conn: Any, schema: str, *, explicit: bool) -> Any:
    body = encode_event(_result(2))
    run_id = uuid.uuid4().hex
    seqs = iter(range(1, 10**9))
    statement = f"INSERT INTO {schema}.floor (run_id, seq, body) VALUES (%s, %s, %s)"

    async def one() -> None:
        if explicit:
            async with conn.transaction():
                await conn.execute(statement, (run_id, next(seqs), body))
        else:
            await conn.execute(statement, (run_id, next(seqs), body))

    return one


def _raw_append(conn: Any, store: Any, run_id: str, lease: Lease) -> Any:
    """The backend's own statement for a one-event append, sent by hand on ``conn``."""
    body = encode_event(_result(2))
    seqs = iter(range(1, 10**9))

    async def one() -> None:
        seq = next(seqs)
        await conn.execute(
            store._sql.append_one,
            {"run_id": run_id, "expected": seq, "generation": lease.generation,
             "owner": lease.owner, "ttl": lease.ttl, "release": False, "new_seq": seq + 1,
             "state": None, "seq": seq + 1, "body": body},
        )

    return one


async def _alternated(calls: int, *variants: Any) -> list[list[float]]:
    """Seconds of each call of each variant, the variants taking turns call by call.

    Turn by turn, a slow moment of the machine (a checkpoint, another process's
    burst, a slow fsync) lands on every variant alike, and the medians of the
    single calls ignore the outliers it leaves. The order rotates from one
    turn to the next, so each variant goes first (after another variant's
    different statement, or on a connection idle for longest) as often as
    each other: in a fixed order the append always followed the explicit
    transaction's three round trips.
    """
    times: list[list[float]] = [[] for _ in variants]
    order = list(range(len(variants)))
    for turn in range(calls):
        shift = turn % len(order)
        for index in order[shift:] + order[:shift]:
            began = time.perf_counter()
            await variants[index]()
            times[index].append(time.perf_counter() - began)
    return times


def _paired(ours: list[float], floor: list[float]) -> float:
    """The median of the turns' ratios: each call against the floor's call of the same turn."""
    return median([a / f for a, f in zip(ours, floor, strict=True)])


async def _single(schema: str, quick: bool) -> list[Row]:
    from durable_agent.backends.postgres import PostgresBackend

    calls = 1000 if quick else 3000
    store = PostgresBackend(URL, schema=schema)
    conn = await _floor_connection(schema)
    try:
        append = _Appender(store, "single", await new_run(store, "single"), 2 * calls + 100)
        floor = _insert(conn, schema, explicit=False)
        explicit = _insert(conn, schema, explicit=True)
        for warm in (append, floor, explicit):
            await _per_call(30, warm)
        turns = await _alternated(calls, append, floor, explicit)
        a, f, e = (median(t) for t in turns)
        paired = _paired(turns[0], turns[1])
        # Where the difference goes: the same turns without the WAL flush (both
        # connections with synchronous_commit = off, for this measurement only),
        # and the backend's statement sent by hand, without the backend around it.
        link = await store._connected()
        writer_conn = link.writer.conn
        assert writer_conn is not None, "the appends above opened the writer's connection"
        await writer_conn.execute("SET synchronous_commit = off")
        await conn.execute("SET synchronous_commit = off")
        raw = await _floor_connection(schema)
        await raw.execute("SET synchronous_commit = off")
        by_hand = _raw_append(raw, store, "by-hand", await new_run(store, "by-hand"))
        await _per_call(30, by_hand)
        a0, f0, h0 = (
            median(t) for t in await _alternated(calls // 2, append, floor, by_hand)
        )
        await raw.close()
    finally:
        await conn.close()
        await store.close()
    return [
        info(NAME, "append / raw INSERT (autocommit), medians",
             f"{a * 1e6:.0f} / {f * 1e6:.0f} us"),
        gated(NAME, "append / raw INSERT+COMMIT (medians, calls alternated)", a / f, "x", LIMIT,
              ".2f"),
        info(NAME, "append / raw INSERT+COMMIT, median of each turn's ratio", f"{paired:.2f}x"),
        info(NAME, "raw BEGIN; INSERT; COMMIT (three round trips)", f"{e * 1e6:.0f} us"),
        info(NAME, "without the WAL flush: append / its statement by hand / raw INSERT",
             f"{a0 * 1e6:.0f} / {h0 * 1e6:.0f} / {f0 * 1e6:.0f} us"),
    ]


async def _group(schema: str, quick: bool) -> list[Row]:
    from durable_agent.backends.postgres import PostgresBackend

    runs, per_run = (256, 10) if quick else (512, 20)
    seconds = 3.0 if quick else 6.0
    store = PostgresBackend(URL, schema=schema)
    try:
        appenders = []
        for i in range(runs):
            run_id = f"group-{i}"
            appenders.append(_Appender(store, run_id, await new_run(store, run_id), per_run))
        before = (store.stats.batches, store.stats.writes)

        async def drive(appender: _Appender) -> None:
            for _ in range(per_run):
                await appender()

        started = time.perf_counter()
        await asyncio.gather(*(drive(a) for a in appenders))
        elapsed = time.perf_counter() - started
        batches = store.stats.batches - before[0]
        writes = store.stats.writes - before[1]
    finally:
        await store.close()
    ours = runs * per_run / elapsed

    connections = [await _floor_connection(schema) for _ in range(32)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def hammer(conn: Any) -> None:
        nonlocal done
        insert = _insert(conn, schema, explicit=False)
        while time.perf_counter() < deadline:
            await insert()
            done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(hammer(c) for c in connections))
    finally:
        raw = done / (time.perf_counter() - started)
        for conn in connections:
            await conn.close()
    return [
        info(NAME, f"group commit: {runs} runs appending at once, one backend",
             f"{ours:,.0f} appends/s, {writes / max(batches, 1):.0f} per commit"),
        info(NAME, "32 parallel connections, raw INSERT+COMMIT each", f"{raw:,.0f} inserts/s"),
        gated(NAME, "32 connections' inserts/s / group commit's appends/s", raw / ours, "x",
              1.0, ".2f"),
    ]


async def _measure(quick: bool) -> list[Row]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await psycopg.AsyncConnection.connect(URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        return [info(NAME, "postgres", f"skipped: {URL} is not reachable ({exc})")]
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        rows = await _single(schema, quick)
        rows += await _group(schema, quick)
        sizes = (20_000, 200_000) if quick else (20_000, 1_000_000)
        for stored in sizes:
            rows += await _claims(admin, f"{schema}_c{stored}", stored, quick)
        rows += await _claims(admin, f"{schema}_f", 30_000, quick, in_flight=10_000)
        rows += await _claims(admin, f"{schema}_w", 30_000, quick, in_flight=10_000,
                              sweeping=True)
        for stored in sizes:
            rows += await _claims(admin, f"{schema}_m{stored}", stored, quick, in_flight=5_000,
                                  capped=True)
        rows += await _claims(admin, f"{schema}_s", sizes[0], quick, in_flight=5_000,
                              capped=True, sweeping=True)
        return rows
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def _claims(
    admin: Any, schema: str, stored: int, quick: bool, *, in_flight: int = 0,
    capped: bool = False, sweeping: bool = False,
) -> list[Row]:
    """Claim latency with ``stored`` runs: 10^4 wait, ``in_flight`` run elsewhere, the rest DONE.

    The runs in flight hold a live lease of another host (MODEL_CALL, an hour
    left): a claim must not step over them to reach the waiting ones.
    ``capped``: their queue has a ``max_running`` (room for every claim made
    here), so each claim first counts the runs holding a place in it.
    ``sweeping``: every claim is one of the sweeps for lapsed leases a link
    makes once a second (``_SWEEP_EVERY`` set to 0), which the p99 of the
    others, a thousand claims a second, hardly sees.
    """
    from durable_agent.backends import _postgres_claims
    from durable_agent.backends.postgres import PostgresBackend

    every = _postgres_claims._SWEEP_EVERY
    if sweeping:
        _postgres_claims._SWEEP_EVERY = 0.0  # type: ignore[misc]

    waiting = 10_000
    claims = 300 if quick else 1000
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        store = PostgresBackend(URL, schema=schema)
        async with store:
            await store.list_runs(limit=1)  # creates the tables
            # Bulk-loaded in SQL (creating a million runs one by one takes too long);
            # the rows are what create_run writes. Finished runs first, then those
            # in flight, so the waiting ones are the newest, as in a store that
            # has run for a year.
            started = time.perf_counter()
            held = "g > %(done)s AND g <= %(done)s + %(held)s"
            await admin.execute(
                f"INSERT INTO {schema}.runs (run_id, agent_name, state, seq, created_at,"
                " updated_at, lease_generation, schema_version, queue, priority,"
                " lease_owner, lease_host, lease_pid, lease_expires, lease_ttl)"
                " SELECT 'run-' || g, 'agent', CASE WHEN g <= %(done)s THEN 'DONE'"
                f" WHEN {held} THEN 'MODEL_CALL' ELSE 'PENDING' END,"
                " 1, 1.7e9 + g, 1.7e9 + g, 0, 1, 'default', 0,"
                f" CASE WHEN {held} THEN 'elsewhere:1:0' END,"
                f" CASE WHEN {held} THEN 'elsewhere' END, CASE WHEN {held} THEN 1 END,"
                f" CASE WHEN {held} THEN extract(epoch FROM clock_timestamp()) + 3600 END,"
                f" CASE WHEN {held} THEN 3600 END"
                " FROM generate_series(1, %(stored)s) g",
                {"done": stored - waiting - in_flight, "held": in_flight, "stored": stored},
            )
            # What autovacuum does after a bulk insert (the hint bits set, the
            # statistics fresh), so the claims below do not pay for the load.
            await admin.execute(f"VACUUM ANALYZE {schema}.runs")
            loaded = time.perf_counter() - started
            owner = LeaseOwner.current()
            cap = {"default": in_flight + waiting} if capped else None
            for _ in range(20):  # warm: connections, prepared statements
                await store.claim_runs(owner, agents=["agent"], limit=1, max_running=cap)
            latencies = []
            for _ in range(claims):
                began = time.perf_counter()
                got = await store.claim_runs(owner, agents=["agent"], limit=1, ttl=300,
                                             max_running=cap)
                latencies.append(time.perf_counter() - began)
                assert len(got) == 1
    finally:
        _postgres_claims._SWEEP_EVERY = every  # type: ignore[misc]
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    label = f"{'capped ' if capped else ''}claim latency, {stored:,} stored runs"
    if sweeping:
        label = f"sweeping {label}"
    label += f" ({waiting:,} waiting"
    where = " in the capped queue" if capped else ""
    label += f", {in_flight:,} in flight{where})" if in_flight else ")"
    return [
        info(NAME, f"{label}: p50 (load {loaded:.0f} s)", f"{p50 * 1e3:.2f} ms"),
        gated(NAME, f"{label}: p99", p99 * 1e3, " ms", 10.0, ".2f"),
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


def main() -> None:
    run_script(__doc__ or NAME, run)


if __name__ == "__main__":
    main()
