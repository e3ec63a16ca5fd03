"""(h) Workers: recovery after SIGKILL, throughput per worker process, claim latency.

Three measurements, each over every store in `STORES` (SQLite here; a store is
a name and a function that gives a fresh URL in a folder, so PostgreSQL is
one more entry):

1. **Recovery**: a worker process holds a run mid-tool (the tool waits on a
   gate file); a second worker idles. The first is SIGKILLed; recovery is the
   time from the kill to the first event the new owner appends (its ``at``,
   same host, same clock). p50/p95 over the trials. SQLite has no wake-up: the
   idle worker finds the run at its next poll (at most 1 s apart).
2. **Throughput**: runs/s of 1, 2 and 4 worker processes (``--concurrency
   16`` each) on runs of one tool call, from the first submit until every run
   is DONE; the workers are up and idle before the clock starts.
3. **Claim latency**: ``claim_runs(limit=1)`` p50/p99 in stores of 10^3, 10^4
   and 10^5 runs (``--quick``: 10^3, 10^4; ``--million``: 10^6 too), mostly
   DONE, 10% WAITING, and enough PENDING to claim. It must not grow with
   finished runs: the p50 of the largest store over the smallest's is gated.
   On SQLite a claim is a durable write (an fsync with ``synchronous=FULL``),
   so its p99 is reported, not gated; the PostgreSQL target is p99 <= 10 ms.
4. **Capped claim latency**: the same with a per-queue cap: 5,000 runs of the
   queue hold a live lease of another host (the oldest: claimed first), and
   each claim passes ``max_running`` for the queue, so it counts the queue's
   runs holding a place before it takes one. Stores of 10^4 and 10^5 runs
   (``--million``: 10^4 and 10^6); flat and p99 as above.

Run alone: ``python benchmarks/bench_workers.py [--quick] [--million]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from _common import Row, gated, info, run_script, scratch_dir

from durable_agent import Agent, RunState, ScriptedModel, ToolCall, ToolContext, tool
from durable_agent.backend import Backend, LeaseOwner
from durable_agent.backends.memory import MemoryBackend
from durable_agent.records import (
    CreatedEvent,
    Lease,
    RunHeader,
    UserMessage,
    encode_event,
    utcnow,
)
from durable_agent.registry import open_backend

NAME = "h) workers"
HERE = Path(__file__).resolve().parent
DEADLINE = 120.0
RECOVERY_TARGET_S = 2.0
CLAIM_P99_TARGET_MS = 10.0
FLAT_TARGET = 1.5
"""The largest store's claim p50 over the smallest's: claims must not slow as runs pile up."""

QUEUE = "capped"
"""The queue of the capped-claim variant, claimed with a ``max_running`` limit."""
CAPPED_HELD = 5_000
"""Runs of the capped queue holding a live lease while its PENDING runs are claimed."""

POSTGRES_URL = os.environ.get(
    "DURABLE_AGENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_SCHEMAS: list[str] = []
"""The PostgreSQL schemas this run made, dropped at its end."""


def _postgres(folder: Path) -> str:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    _SCHEMAS.append(schema)
    return f"{POSTGRES_URL}?schema={schema}"


def _postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def _drop_schemas() -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        while _SCHEMAS:
            conn.execute(f"DROP SCHEMA IF EXISTS {_SCHEMAS.pop()} CASCADE")


STORES: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda folder: f"sqlite:///{folder / 'runs.db'}",
    "postgres": _postgres,
}
"""Store name -> a fresh store URL in a scratch folder (a schema of its own on PostgreSQL)."""


# -- the application the worker processes run ---------------------------------------------


@tool
async def step(ctx: ToolContext) -> str:
    """Wait while the gate file exists (the recovery trial holds a call open there)."""
    marker = Path(os.environ.get("BENCH_DIR", ".")) / f"started-{ctx.run_id}-{os.getpid()}"
    marker.touch()
    gate = Path(os.environ.get("BENCH_DIR", ".")) / "gate"
    while gate.exists():  # noqa: ASYNC110 - held open by another process
        await asyncio.sleep(0.005)
    return "ok"


def _agent(db: Backend | str) -> Agent:
    return Agent(ScriptedModel([ToolCall("step"), "done"]), db=db, tools=[step], name="bench")


AGENT = _agent(MemoryBackend())
"""What the worker processes serve: ``--agent bench_workers:AGENT``."""


class Fleet:
    def __init__(self, folder: Path, url: str) -> None:
        self.folder, self.url = folder, url
        self.env = {**os.environ, "BENCH_DIR": str(folder), "PYTHONPATH": str(HERE)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, concurrency: int = 16) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "durable_agent", "worker", "--db", self.url,
             "--agent", "bench_workers:AGENT", "--concurrency", str(concurrency)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=log,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def started(self, proc: subprocess.Popen[bytes]) -> bool:
        index = self.procs.index(proc)
        return "started:" in (self.folder / f"worker-{index}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.005)


async def _submit(url: str, count: int) -> list[str]:
    async with _agent(url) as agent:
        return [(await agent.submit_async("go")).run_id for _ in range(count)]


async def _done(url: str, run_ids: list[str]) -> int:
    backend = open_backend(url)
    async with backend:
        headers = [await backend.get_run(r) for r in run_ids]
    return sum(h.state is RunState.DONE for h in headers)


async def _first_event_after(url: str, run_id: str, moment: float) -> float | None:
    backend = open_backend(url)
    async with backend:
        stored = await backend.load_run(run_id)
    after = [e.at.timestamp() for e in stored.events if e.at.timestamp() >= moment]
    return min(after) if after else None


# -- 1. recovery ------------------------------------------------------------------------------


def recovery(store: str, trials: int) -> list[Row]:
    seconds: list[float] = []
    with scratch_dir() as folder:
        fleet = Fleet(folder, STORES[store](folder))
        try:
            for _ in range(trials):
                (folder / "gate").touch()
                victim = fleet.start()
                (run_id,) = asyncio.run(_submit(fleet.url, 1))
                _wait((folder / f"started-{run_id}-{victim.pid}").exists, "a call in flight")
                spare = fleet.start()  # idle: the victim's lease is live
                _wait(lambda: fleet.started(spare), "the spare worker")  # noqa: B023
                killed_at = time.time()
                victim.kill()
                victim.wait()
                _wait((folder / f"started-{run_id}-{spare.pid}").exists, "the takeover")
                first = asyncio.run(_first_event_after(fleet.url, run_id, killed_at))
                if first is not None:
                    seconds.append(first - killed_at)
                (folder / "gate").unlink()
                fleet.stop()
        finally:
            (folder / "gate").unlink(missing_ok=True)
            fleet.stop()
    p50 = statistics.median(seconds)
    p95 = sorted(seconds)[max(0, round(0.95 * len(seconds)) - 1)]
    bench = f"{NAME} {store}"
    return [
        gated(bench, f"recovery SIGKILL -> first append p50 ({len(seconds)} trials)", p50, " s",
              RECOVERY_TARGET_S, ".2f"),
        info(bench, "recovery SIGKILL -> first append p95", f"{p95:.2f} s"),
    ]


# -- 2. throughput ------------------------------------------------------------------------------


def throughput(store: str, runs: int, processes: int) -> Row:
    with scratch_dir() as folder:
        fleet = Fleet(folder, STORES[store](folder))
        try:
            workers = [fleet.start() for _ in range(processes)]
            for proc in workers:
                _wait(lambda: fleet.started(proc), "the workers")  # noqa: B023
            began = time.perf_counter()
            run_ids = asyncio.run(_submit(fleet.url, runs))
            _wait(lambda: asyncio.run(_done(fleet.url, run_ids)) == runs, "every run DONE")
            elapsed = time.perf_counter() - began
        finally:
            fleet.stop()
    return info(
        f"{NAME} {store}", f"runs/s, {processes} worker process(es), {runs} runs",
        f"{runs / elapsed:.0f}/s",
    )


# -- 3. claim latency ------------------------------------------------------------------------


def _populate_sqlite(path: Path, total: int, pending: int, held: int = 0) -> None:
    """Fill a SQLite store fast, with raw SQL in the backend's own row layout."""
    from durable_agent.backends import _sqlite_ops as ops

    asyncio.run(_touch(f"sqlite:///{path}"))
    lease = _elsewhere()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        batch: list[tuple[object, ...]] = []
        for i in range(total):
            state = _state_of(i, pending, held)
            header = RunHeader(
                run_id=f"r{i:08d}", agent_name="bench", state=state, seq=1,
                queue=QUEUE if held else "default",
                lease=lease if state is RunState.MODEL_CALL else None,
                lease_generation=1 if state is RunState.MODEL_CALL else 0,
            )
            batch.append(ops.header_row(header))
            if len(batch) >= 10_000:
                conn.executemany(ops._INSERT_RUN, batch)
                batch.clear()
        conn.executemany(ops._INSERT_RUN, batch)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")


async def _touch(url: str) -> None:
    backend = open_backend(url)
    async with backend:
        await backend.list_runs(limit=1)  # creates the tables


def _state_of(i: int, pending: int, held: int = 0) -> RunState:
    """The state of the ``i``-th stored run, oldest first.

    The ``held`` oldest run elsewhere (MODEL_CALL, leased by another host: they
    were claimed first), the next ``pending`` are PENDING, then 10% WAITING and
    the rest DONE.
    """
    if i < held:
        return RunState.MODEL_CALL
    if i < held + pending:
        return RunState.PENDING
    return RunState.WAITING if i % 10 == 0 else RunState.DONE


def _elsewhere() -> Lease:
    """The live lease of the runs in flight: another host's worker, an hour left."""
    return Lease(owner="elsewhere:1:0", host="elsewhere", pid=1, generation=1,
                 expires_at=time.time() + 3600, ttl=3600)


def _populate_postgres(url: str, total: int, pending: int, held: int = 0) -> None:
    """Fill a PostgreSQL store fast, in bulk SQL, with the rows `create_run` writes.

    One template header and event per state, written by the backend's own
    row mapping and the records' encoder, then copied ``total`` times by
    ``INSERT ... SELECT generate_series`` (10^6 runs in seconds; through the
    contract, 165k runs took 7 minutes): each run is a header at seq 1 and
    its one event, so a claim, a listing and a load read it as any other.
    Then ``VACUUM ANALYZE``, what autovacuum does after a bulk insert.
    """
    import psycopg

    from durable_agent.backends import _postgres_sql as q

    asyncio.run(_touch(url))
    base, _, query = url.partition("?schema=")
    schema = query.split("&")[0]
    first = CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="x"),))
    created = utcnow()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # one fsync at the end is enough
        with conn.transaction():
            conn.execute(
                f"CREATE TEMP TABLE template (LIKE {schema}.runs, body TEXT) ON COMMIT DROP"
            )
            states = (RunState.MODEL_CALL, RunState.PENDING, RunState.WAITING, RunState.DONE)
            for state in states:
                header = RunHeader(
                    run_id=state.value, agent_name="bench", state=state, seq=1,
                    created_at=created, updated_at=created, queue=QUEUE if held else "default",
                    lease=_elsewhere() if state is RunState.MODEL_CALL else None,
                    lease_generation=1 if state is RunState.MODEL_CALL else 0,
                )
                body = encode_event(first.model_copy(update={"state": state}))
                conn.execute(
                    f"INSERT INTO template ({q.HEADER_COLUMNS}, body)"
                    f" VALUES ({', '.join(['%s'] * (q.WIDTH + 1))})",
                    (*q.header_row(header), body),
                )
            # Run i is r{i:08d}, created 1 ms after run i - 1, the last one now, as
            # in a store that has been running: claim order is creation order.
            columns = q.HEADER_COLUMNS.split(", ")
            picks = ", ".join(
                "format('r%%s', lpad(g::text, 8, '0'))" if c == "run_id"
                else f"t.{c} - (%(last)s - g) / 1000.0" if c in ("created_at", "updated_at")
                else f"t.{c}"
                for c in columns
            )
            state_sql = (
                "CASE WHEN g < %(held)s THEN 'MODEL_CALL' WHEN g < %(held)s + %(pending)s"
                " THEN 'PENDING' WHEN g %% 10 = 0 THEN 'WAITING' ELSE 'DONE' END"
            )
            params = {"pending": pending, "held": held, "last": total - 1}
            conn.execute(
                f"INSERT INTO {schema}.runs ({q.HEADER_COLUMNS}) SELECT {picks}"
                f" FROM generate_series(0, %(last)s) g JOIN template t ON t.state = {state_sql}",
                params,
            )
            conn.execute(
                f"INSERT INTO {schema}.events (run_id, seq, body)"
                f" SELECT format('r%%s', lpad(g::text, 8, '0')), 1, t.body"
                f" FROM generate_series(0, %(last)s) g JOIN template t ON t.state = {state_sql}",
                params,
            )
        conn.execute("SET synchronous_commit = on")
        conn.execute(f"VACUUM ANALYZE {schema}.runs")
        conn.execute(f"VACUUM ANALYZE {schema}.events")


async def _claim_times(url: str, samples: int, max_running: dict[str, int]) -> list[float]:
    backend = open_backend(url)
    owner = LeaseOwner.current()
    times: list[float] = []
    async with backend:
        # Connect, warm the cache: the first claim takes one run.
        await backend.claim_runs(owner, agents=["bench"], max_running=max_running)
        for _ in range(samples):
            began = time.perf_counter()
            got = await backend.claim_runs(
                owner, agents=["bench"], limit=1, ttl=60, max_running=max_running
            )
            times.append(time.perf_counter() - began)
            assert got, "ran out of PENDING runs"
    return times


def claim_times(store: str, total: int, samples: int, held: int = 0) -> list[float]:
    """Sorted seconds of ``samples`` claims in a store of ``total`` runs.

    ``held``: that many runs of a queue capped by ``max_running`` hold a live
    lease, and the claims take the queue's PENDING runs under the cap.
    """
    pending = samples + 10
    with scratch_dir() as folder:
        url = STORES[store](folder)
        if store == "sqlite":
            _populate_sqlite(folder / "runs.db", total, pending, held)
        else:
            _populate_postgres(url, total, pending, held)
        # Room for every claim of the measurement, never more: the cap is counted each time.
        capped = {QUEUE: held + pending} if held else {}
        return sorted(asyncio.run(_claim_times(url, samples, capped)))


def claim_latency(store: str, sizes: list[int], samples: int, held: int = 0) -> list[Row]:
    """p50/p99 per store size, and how much the largest store's p50 exceeds the smallest's.

    ``held``: the capped variant (`claim_times`).
    """
    bench = f"{NAME} {store}"
    what = f"capped claim ({held:,} held in the queue)" if held else "claim"
    rows: list[Row] = []
    p50s: list[float] = []
    for total in sizes:
        times = claim_times(store, total, samples, held)
        p50 = times[len(times) // 2] * 1000
        p99 = times[max(0, round(0.99 * len(times)) - 1)] * 1000
        p50s.append(p50)
        rows.append(info(bench, f"{what} p50, {total:,} stored runs", f"{p50:.2f} ms"))
        rows.append(
            gated(bench, f"{what} p99, {total:,} stored runs", p99, " ms", CLAIM_P99_TARGET_MS,
                  ".2f")
            if store != "sqlite"  # a claim is a durable write: SQLite's is an fsync
            else info(bench, f"{what} p99, {total:,} stored runs", f"{p99:.2f} ms")
        )
    rows.append(
        gated(bench, f"{what} p50 flat: {sizes[-1]:,} vs {sizes[0]:,} stored runs",
              p50s[-1] / p50s[0], "x", FLAT_TARGET, ".2f")
    )
    return rows


def run(quick: bool, *, million: bool = False) -> list[Row]:
    rows: list[Row] = []
    for store in STORES:
        if store == "postgres" and not _postgres_reachable():
            rows.append(info(NAME, "postgres", f"skipped: {POSTGRES_URL} is not reachable"))
            continue
        try:
            rows.extend(_one_store(store, quick, million))
        finally:
            if store == "postgres":
                _drop_schemas()
    return rows


def _one_store(store: str, quick: bool, million: bool) -> list[Row]:
    rows = recovery(store, trials=3 if quick else 10)
    runs = 60 if quick else 300
    for processes in (1, 2, 4):
        rows.append(throughput(store, runs, processes))
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    if million:
        sizes.append(1_000_000)
    samples = 100 if quick else 300
    rows.extend(claim_latency(store, sizes, samples))
    capped = [10_000, 1_000_000] if million else [10_000, 100_000]
    rows.extend(claim_latency(store, capped, samples, held=CAPPED_HELD))
    return rows


def main() -> None:
    million = "--million" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--million"]
    run_script(__doc__ or NAME, lambda quick: run(quick, million=million), argv=argv)


if __name__ == "__main__":
    main()
