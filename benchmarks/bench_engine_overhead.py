"""(a) Engine cost per state transition on SQLite, against a raw aiosqlite floor.

One run of many tool turns (a zero-latency `ScriptedModel`, a trivial async
tool) on `SqliteBackend(synchronous="FULL")`. Its wall time is divided by the
number of state transitions stored (events whose ``trigger`` is not None:
start, each model answer, each tools_done).

The floor is the least any durable store can do for the same work: a raw
aiosqlite loop doing one INSERT + COMMIT per transition, with the same pragmas
(WAL, synchronous=FULL, busy_timeout) and the same total JSON bytes spread
evenly over the rows. Target: engine / floor <= 1.5x (median of the paired
repeats; engine and floor run alternately, each on a fresh file).

To show where the difference goes, three more numbers (no target):

* the engine's exact ``backend.append`` calls replayed on a fresh
  `SqliteBackend` without the engine (the store's own cost);
* the same comparison at ``synchronous=NORMAL``, where a WAL commit does not
  fsync, so CPU and thread hops dominate instead of the disk;
* the engine on `MemoryBackend` (engine + model + tool CPU, no I/O);
* the same with telemetry (`durable_agent.telemetry`): not configured, an
  OpenTelemetry no-op tracer and meter provider, and the SDK recording to an
  in-memory span exporter and metric reader (alternated; needs the ``otel``
  extra and the SDK, skipped without them).

Run alone: ``python benchmarks/bench_engine_overhead.py [--quick] [--profile]``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
from _common import (
    BackendTimer,
    Row,
    count_transitions,
    event_json_bytes,
    gated,
    info,
    median,
    open_sqlite,
    profile_call,
    run_script,
    scratch_dir,
    sqlite_pragmas,
)

from durable_agent import Agent, RunNotFoundError, ScriptedModel, Task, ToolCall
from durable_agent.backend import Backend
from durable_agent.backends.memory import MemoryBackend

NAME = "a) engine/transition"
TARGET_RATIO = 1.5


async def noop(n: int) -> str:
    """A trivial async tool (async, so no worker-thread hop is measured)."""
    return "ok"


def make_agent(backend: Backend, turns: int) -> Agent:
    script: list[str | ToolCall] = [ToolCall("noop", {"n": i}) for i in range(turns)]
    script.append("done")
    return Agent(ScriptedModel(script), db=backend, retry=1, tools=[noop])


@dataclass(frozen=True, slots=True)
class EngineSample:
    wall: float
    transitions: int
    appends: int
    writes: int
    write_seconds: float
    append_seconds: float
    json_bytes: int
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(repr=False)
    """The backend write calls the engine made, in order, for `replay`."""


async def engine_run(backend: Backend, turns: int) -> EngineSample:
    """Warm the backend and the engine with a one-turn run, then time a ``turns`` run."""
    await make_agent(backend, 1).do_async(Task("warm-up"))
    timer = BackendTimer(backend, record=True)
    agent = make_agent(backend, turns)
    gc.collect()
    started = time.perf_counter()
    output = await agent.do_async(Task("benchmark"), return_output=True)
    wall = time.perf_counter() - started
    stored = await backend.load_run(output.run_id)
    assert output.output == "done", output
    return EngineSample(
        wall=wall,
        transitions=count_transitions(stored),
        appends=timer.calls["append"],
        writes=timer.write_calls,
        write_seconds=timer.write_seconds,
        append_seconds=timer.seconds["append"],
        json_bytes=event_json_bytes(stored),
        calls=timer.recorded,
    )


async def engine_on_sqlite(path: Path, turns: int, synchronous: str = "FULL") -> EngineSample:
    backend = open_sqlite(path, synchronous=synchronous)
    try:
        return await engine_run(backend, turns)
    finally:
        await backend.close()


async def replay(path: Path, sample: EngineSample, synchronous: str = "FULL") -> float:
    """Seconds a fresh `SqliteBackend` takes for the engine's appends, without the engine.

    The run is created first (not timed); then every recorded ``append`` is
    awaited in order with the same events, expected seq and lease.
    """
    backend = open_sqlite(path, synchronous=synchronous)
    try:
        with suppress(RunNotFoundError):
            await backend.get_run("connect")  # open the connection outside the timing
        appends = [(args, kwargs) for name, args, kwargs in sample.calls if name == "append"]
        for name, args, kwargs in sample.calls:
            if name == "create_run":
                await backend.create_run(*args, **kwargs)
        gc.collect()
        started = time.perf_counter()
        for args, kwargs in appends:
            await backend.append(*args, **kwargs)
        return time.perf_counter() - started
    finally:
        await backend.close()


async def floor_run(path: Path, rows: int, payload_bytes: int, synchronous: str = "FULL") -> float:
    """Seconds for ``rows`` x (INSERT one JSON row + COMMIT) with raw aiosqlite."""
    body = '{"kind":"bench","data":"' + "x" * max(0, payload_bytes - 26) + '"}'
    async with aiosqlite.connect(path) as db:
        for pragma in sqlite_pragmas(synchronous):
            await db.execute(pragma)
        await db.execute(
            "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "body TEXT NOT NULL, PRIMARY KEY (run_id, seq))"
        )
        await db.commit()
        # Warm-up, as the engine gets one.
        for seq in range(5):
            await db.execute("INSERT INTO events VALUES (?, ?, ?)", ("warm", seq, body))
            await db.commit()
        gc.collect()
        started = time.perf_counter()
        for seq in range(rows):
            await db.execute("INSERT INTO events VALUES (?, ?, ?)", ("run", seq, body))
            await db.commit()
        return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Paired:
    engine: EngineSample
    floor: float
    replay: float

    @property
    def ratio(self) -> float:
        return self.engine.wall / self.floor


def paired(turns: int, repeats: int, synchronous: str) -> list[Paired]:
    """Engine, floor and replay, measured alternately on fresh files, ``repeats`` times."""
    samples: list[Paired] = []
    for _ in range(repeats):
        with scratch_dir() as tmp:
            engine = asyncio.run(engine_on_sqlite(tmp / "engine.db", turns, synchronous))
        per_row = engine.json_bytes // engine.transitions
        with scratch_dir() as tmp:
            floor = asyncio.run(
                floor_run(tmp / "floor.db", engine.transitions, per_row, synchronous)
            )
        with scratch_dir() as tmp:
            replayed = asyncio.run(replay(tmp / "replay.db", engine, synchronous))
        samples.append(Paired(engine, floor, replayed))
    return samples


def run(quick: bool) -> list[Row]:
    turns = 50 if quick else 200
    repeats = 5 if quick else 11
    full = paired(turns, repeats, "FULL")
    normal = paired(turns, max(3, repeats // 2), "NORMAL")
    memory = [asyncio.run(engine_run(MemoryBackend(), turns)) for _ in range(repeats)]
    telemetry = telemetry_rows(turns, repeats)

    first = full[0].engine
    n = first.transitions
    us = 1e6

    def per_transition(values: list[float]) -> str:
        return f"{median(values) / n * us:.0f} us"

    ratios = [p.ratio for p in full]
    engine = [p.engine for p in full]
    return [
        info(
            NAME,
            f"{turns} tool turns, {repeats} repeats: transitions / appends / all writes",
            f"{n} / {first.appends} / {first.writes}",
        ),
        info(NAME, "event JSON per transition", f"{first.json_bytes / n:.0f} B"),
        info(
            NAME, "engine wall / transition (SQLite FULL)", per_transition([e.wall for e in engine])
        ),
        info(
            NAME,
            "raw aiosqlite floor / transition (INSERT+COMMIT)",
            per_transition([p.floor for p in full]),
        ),
        gated(
            NAME,
            "engine / floor, FULL (median of paired repeats)",
            median(ratios),
            "x",
            TARGET_RATIO,
            ".2f",
        ),
        info(
            NAME,
            "  fastest engine run / fastest floor run",
            f"{min(e.wall for e in engine) / min(p.floor for p in full):.2f}x",
        ),
        info(
            NAME,
            "  spread of the paired ratios (min - max)",
            f"{min(ratios):.2f} - {max(ratios):.2f}x",
        ),
        info(
            NAME,
            "backend.append alone (engine's appends replayed) / transition",
            per_transition([p.replay for p in full]),
        ),
        info(NAME, "  replay / floor, FULL", f"{median([p.replay / p.floor for p in full]):.2f}x"),
        info(
            NAME,
            "engine / floor at synchronous=NORMAL (no fsync per commit)",
            f"{median([p.ratio for p in normal]):.2f}x",
        ),
        info(
            NAME,
            "  engine / replay / floor per transition at NORMAL",
            f"{median([p.engine.wall for p in normal]) / n * us:.0f} / "
            f"{median([p.replay for p in normal]) / n * us:.0f} / "
            f"{median([p.floor for p in normal]) / n * us:.0f} us",
        ),
        info(
            NAME,
            "engine wall / append (write), FULL",
            f"{median([e.wall / e.appends for e in engine]) * us:.0f} us",
        ),
        info(
            NAME,
            "  of which awaiting backend.append",
            f"{median([e.append_seconds / e.appends for e in engine]) * us:.0f} us",
        ),
        info(
            NAME,
            "  of which engine outside any backend write",
            f"{median([(e.wall - e.write_seconds) / e.appends for e in engine]) * us:.0f} us",
        ),
        info(
            NAME,
            "engine wall / transition on MemoryBackend (CPU only)",
            f"{median([m.wall / m.transitions for m in memory]) * us:.0f} us",
        ),
        *telemetry,
    ]


def telemetry_rows(turns: int, repeats: int) -> list[Row]:
    """Engine CPU per transition on `MemoryBackend`: telemetry off, no-op, in-memory export."""
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return [info(NAME, "telemetry cost", "skipped (needs opentelemetry-sdk)")]
    from durable_agent import telemetry

    def recording() -> tuple[Any, Any]:
        tracing = TracerProvider()
        tracing.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        return tracing, MeterProvider(metric_readers=[InMemoryMetricReader()])

    setups: dict[str, Any] = {
        "not configured": None,
        "no-op providers": lambda: (trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()),
        "SDK, in-memory exporter": recording,
    }
    walls: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, make in setups.items():
            if make is None:
                telemetry.configure(enabled=None)
            else:
                tracing, metering = make()
                telemetry.configure(tracer_provider=tracing, meter_provider=metering)
            try:
                sample = asyncio.run(engine_run(MemoryBackend(), turns))
            finally:
                telemetry.configure(enabled=None)
            walls[name].append(sample.wall / sample.transitions)
    off = median(walls["not configured"])
    rows = []
    for name, values in walls.items():
        value = median(values)
        extra = "" if name == "not configured" else (
            f" ({(value - off) * 1e6:+.0f} us, {value / off - 1:+.0%})"
        )
        rows.append(info(NAME, f"MemoryBackend / transition, telemetry {name}",
                         f"{value * 1e6:.0f} us{extra}"))
    return rows


def profile(quick: bool) -> None:
    turns = 50 if quick else 200
    with scratch_dir() as tmp:
        profile_call(
            f"engine, {turns} tool turns on SQLite FULL",
            lambda: asyncio.run(engine_on_sqlite(tmp / "profile.db", turns)),
        )
    profile_call(
        f"engine, {turns} tool turns on MemoryBackend",
        lambda: asyncio.run(engine_run(MemoryBackend(), turns)),
    )


def main() -> None:
    run_script(__doc__ or NAME, run, profile=profile)


if __name__ == "__main__":
    main()
