"""The same-work floor of benchmark (b): the engine's durable work with no framework.

What the engine stores for one run of the concurrency workload is captured
once from a real run (`capture_workload`): the events of ``create_run`` and of
each of its 21 appends, as the JSON text `encode_event` writes. The floor then
runs N tasks that do exactly that durable work and nothing else:

* one ``INSERT`` of the run's header row and its first events, then per
  effect (a model call, awaited as ``asyncio.sleep(delay)``, or the trivial
  tool) one append: the header compare-and-set (``UPDATE runs ... WHERE seq =
  ? AND lease_generation = ? AND lease_owner = ? RETURNING``, which also
  renews the lease) and an ``INSERT`` per event, the same JSON bytes;
* one writer task batching every pending write into one transaction with one
  commit (one fsync), in one hop to a database thread;
* each task awaiting its commit before its next effect (durability rules 1
  and 2), and the last append releasing the lease.

``pydantic=True`` adds what the engine's records add: every append builds its
events as the validated pydantic records (`model_validate`) and encodes them
with `encode_event`, instead of writing JSON text prepared in advance.

Run alone: ``python benchmarks/floor_concurrency.py [--runs N] [--delay S] [--pydantic]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Workload", "capture_workload", "run_floor"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, state TEXT NOT NULL, "
    "seq INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
    "lease_owner TEXT, lease_host TEXT, lease_pid INTEGER, lease_generation INTEGER NOT NULL, "
    "lease_expires REAL, lease_ttl REAL, cancel_requested TEXT)",
    "CREATE TABLE IF NOT EXISTS events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
    "body TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID",
)
_INSERT_RUN = "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
_INSERT_EVENT = "INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)"
_CAS = (
    "UPDATE runs SET seq = ?, state = ?, updated_at = ?, lease_owner = ?, lease_expires = ? "
    "WHERE run_id = ? AND seq = ? AND lease_generation = ? AND lease_owner = ? "
    "RETURNING cancel_requested"
)
TTL = 30.0


@dataclass(frozen=True, slots=True)
class Step:
    """One append of the captured run: its events, as records and as stored JSON."""

    model_call: bool
    """The effect before it is a model call (else the tool)."""
    expected_seq: int
    last_seq: int
    state: str
    release: bool
    bodies: tuple[tuple[int, str], ...]
    records: tuple[tuple[type[Any], dict[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class Workload:
    """What the engine stores for one run: ``create_run``'s events, then each append."""

    created: tuple[tuple[int, str], ...]
    state_after_create: str
    steps: tuple[Step, ...]

    @property
    def transitions(self) -> int:
        """State transitions per run: the start, and one per append (each carries a trigger)."""
        return 1 + len(self.steps)


def capture_workload(make_agent: Any) -> Workload:
    """Record one engine run of ``make_agent(backend, 0.0)`` on a scratch SQLite file."""
    from _common import BackendTimer, open_sqlite

    from durable_agent import Task
    from durable_agent.records import encode_event

    async def record() -> Workload:
        with tempfile.TemporaryDirectory(prefix="durable-floor-") as folder:
            backend = open_sqlite(Path(folder) / "capture.db")
            try:
                agent = make_agent(backend, 0.0)
                await agent.do_async(Task("warm-up"))
                timer = BackendTimer(backend, methods=("create_run", "append"), record=True)
                await agent.do_async(Task("task 0"))
            finally:
                await backend.close()
        created: tuple[tuple[int, str], ...] = ()
        state = "PENDING"
        steps: list[Step] = []
        previous = "create"
        for name, args, kwargs in timer.recorded:
            events = args[1]
            if name == "create_run":
                created = tuple((e.seq, encode_event(e)) for e in events)
                state = events[-1].state.value
                continue
            # The engine's appends alternate: model answer (+ tool intent), tool result.
            model_call = previous != "model"
            previous = "model" if model_call else "tool"
            steps.append(
                Step(
                    model_call=model_call,
                    expected_seq=kwargs["expected_seq"],
                    last_seq=events[-1].seq,
                    state=events[-1].state.value,
                    release=bool(kwargs.get("release")),
                    bodies=tuple((e.seq, encode_event(e)) for e in events),
                    records=tuple((type(e), e.model_dump()) for e in events),
                )
            )
        return Workload(created=created, state_after_create=state, steps=tuple(steps))

    return asyncio.run(record())


class _Writer:
    """One writer task: every pending write in one transaction, one commit, one thread hop."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        for statement in _SCHEMA:
            self.db.execute(statement)
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="floor-sqlite")
        self.pending: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False
        self.commits = 0

    def submit(self, write: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((write, future))
        self.wakeup.set()
        return future

    async def loop(self) -> None:
        running = asyncio.get_running_loop()
        while self.pending or not self.closing:
            if not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            batch = list(self.pending)
            self.pending.clear()
            outcomes = await running.run_in_executor(self.thread, self._commit, batch)
            self.commits += 1
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        db = self.db
        outcomes: list[tuple[bool, Any]] = []
        db.execute("BEGIN IMMEDIATE")
        for write, _ in batch:
            try:
                outcomes.append((True, write(db)))
            except Exception as exc:  # a refused compare-and-set wrote nothing
                outcomes.append((False, exc))
        db.execute("COMMIT")
        return outcomes

    def close(self) -> None:
        self.thread.shutdown()
        self.db.close()


def _create(
    run_id: str, state: str, owner: str, bodies: tuple[tuple[int, str], ...]
) -> Any:
    now = time.time()
    row = (run_id, state, len(bodies), now, now, owner, "host", os.getpid(), 1, now + TTL, TTL)

    def write(db: sqlite3.Connection) -> None:
        db.execute(_INSERT_RUN, row)
        db.executemany(_INSERT_EVENT, [(run_id, seq, body) for seq, body in bodies])

    return write


def _append(run_id: str, owner: str, step: Step, bodies: list[tuple[int, str]]) -> Any:
    now = time.time()
    holder, expires = (None, None) if step.release else (owner, now + TTL)
    cas = (step.last_seq, step.state, now, holder, expires, run_id, step.expected_seq, 1, owner)

    def write(db: sqlite3.Connection) -> Any:
        row = db.execute(_CAS, cas).fetchone()
        if row is None:
            raise RuntimeError(f"run {run_id}: the compare-and-set was refused")
        if len(bodies) == 1:
            db.execute(_INSERT_EVENT, (run_id, *bodies[0]))
        else:
            db.executemany(_INSERT_EVENT, [(run_id, seq, body) for seq, body in bodies])
        return row[0]

    return write


async def _tool(key: int) -> str:
    return f"value-{key}"


async def _one_run(
    writer: _Writer, workload: Workload, index: int, delay: float, pydantic: bool
) -> None:
    from durable_agent.records import encode_event

    run_id = f"floor-{os.getpid()}-{index:08d}"
    owner = f"owner-{os.getpid()}"
    await writer.submit(_create(run_id, workload.state_after_create, owner, workload.created))
    for turn, step in enumerate(workload.steps):
        if step.model_call:
            await asyncio.sleep(delay)
        else:
            await _tool(turn)
        if pydantic:
            bodies = [
                (fields["seq"], encode_event(cls.model_validate(fields)))
                for cls, fields in step.records
            ]
        else:
            bodies = list(step.bodies)
        await writer.submit(_append(run_id, owner, step, bodies))


@dataclass(frozen=True, slots=True)
class FloorResult:
    wall: float
    transitions: int
    commits: int


async def run_floor(
    path: Path, workload: Workload, runs: int, delay: float, *, pydantic: bool = False,
    synchronous: str = "FULL", measured: Any = None,
) -> FloorResult:
    """``runs`` concurrent floor runs on a fresh file at ``path``.

    ``measured`` (a context manager factory) wraps the timed part, for the
    caller's CPU and GC counters.
    """
    writer = _Writer(path, synchronous)
    task = asyncio.get_running_loop().create_task(writer.loop())
    try:
        await _one_run(writer, workload, -1, 0.0, pydantic)  # warm-up
        commits = writer.commits
        started = time.perf_counter()
        if measured is None:
            await asyncio.gather(*(_one_run(writer, workload, i, delay, pydantic)
                                   for i in range(runs)))
        else:
            with measured():
                await asyncio.gather(*(_one_run(writer, workload, i, delay, pydantic)
                                       for i in range(runs)))
        wall = time.perf_counter() - started
        return FloorResult(wall, runs * workload.transitions, writer.commits - commits)
    finally:
        writer.closing = True
        writer.wakeup.set()
        await task
        writer.close()


def main() -> None:
    from bench_concurrency import make_agent

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--pydantic", action="store_true")
    args = parser.parse_args()
    workload = capture_workload(make_agent)
    with tempfile.TemporaryDirectory(prefix="durable-floor-") as folder:
        cpu = time.process_time()
        result = asyncio.run(
            run_floor(Path(folder) / "floor.db", workload, args.runs, args.delay,
                      pydantic=args.pydantic)
        )
        cpu = time.process_time() - cpu
    print(
        f"{args.runs} floor runs: {result.transitions / result.wall:,.0f} transitions/s, "
        f"wall {result.wall:.2f} s, {result.commits} commits, "
        f"CPU {cpu / result.transitions * 1e6:.0f} us / transition (incl. set-up)"
    )


if __name__ == "__main__":
    main()
