"""Shared helpers for the benchmarks: result rows, the table printer, stores, tools.

Every benchmark module exposes ``run(quick: bool) -> list[Row]`` and a
``main()`` that parses the common options and prints its table; ``run_all.py``
calls each ``run`` and prints one table. Nothing here asserts on time: a
benchmark reports the measured value, its target and PASS/MISS.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durable_agent.backend import Backend
from durable_agent.records import StoredRun, encode_event

__all__ = [
    "BackendTimer",
    "Options",
    "Row",
    "count_transitions",
    "event_json_bytes",
    "gated",
    "info",
    "machine_summary",
    "median",
    "open_sqlite",
    "parse_options",
    "print_table",
    "profile_call",
    "scratch_dir",
    "set_scratch_root",
    "sqlite_pragmas",
]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a benchmark table.

    ``target`` is the limit as text (``"<= 1.5x"``); ``ok`` is None for an
    informational row that has no target.
    """

    bench: str
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        if self.ok is None:
            return ""
        return "PASS" if self.ok else "MISS"


def gated(bench: str, metric: str, value: float, unit: str, limit: float, fmt: str) -> Row:
    """A row whose ``value`` must be at most ``limit``."""
    return Row(
        bench,
        metric,
        f"{value:{fmt}}{unit}",
        f"<= {limit:{fmt}}{unit}",
        value <= limit,
    )


def info(bench: str, metric: str, value: str) -> Row:
    """A row with no target."""
    return Row(bench, metric, value)


def print_table(rows: Sequence[Row], *, file: Any = None) -> None:
    """Print ``rows`` as an aligned text table."""
    out = file if file is not None else sys.stdout
    header = Row("bench", "metric", "value", "target", None)
    cells = [(r.bench, r.metric, r.value, r.target, r.verdict) for r in (header, *rows)]
    cells[0] = (*cells[0][:4], "result")
    widths = [max(len(c[i]) for c in cells) for i in range(5)]

    def line(c: tuple[str, ...]) -> str:
        return "  ".join(
            (v.rjust(w) if i in (2, 3) else v.ljust(w))
            for i, (v, w) in enumerate(zip(c, widths, strict=True))
        ).rstrip()

    print(line(cells[0]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for c in cells[1:]:
        print(line(c), file=out)
    gated_rows = [r for r in rows if r.ok is not None]
    passed = sum(1 for r in gated_rows if r.ok)
    print(f"\n{passed}/{len(gated_rows)} targets met", file=out)


def machine_summary() -> str:
    """Python, platform and CPU count, printed above every table."""
    try:
        one, five, fifteen = os.getloadavg()
        load = f", load average {one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        load = ""
    return (
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, sqlite {_sqlite_version()}{load}"
    )


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    profile: bool
    directory: Path | None


def parse_options(description: str, argv: Sequence[str] | None = None) -> Options:
    """The options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for CI)")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of one measured run"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where temporary databases go (default: the system temp dir); "
        "it must be a real disk, since fsync cost is part of what is measured",
    )
    args = parser.parse_args(argv)
    if args.dir is not None:
        set_scratch_root(args.dir)
    return Options(quick=args.quick, profile=args.profile, directory=args.dir)


_SCRATCH_ROOT: list[Path] = []


def set_scratch_root(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _SCRATCH_ROOT[:] = [path]


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards."""
    root = str(_SCRATCH_ROOT[0]) if _SCRATCH_ROOT else None
    path = Path(tempfile.mkdtemp(prefix="durable-bench-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_sqlite(path: Path, **options: Any) -> Backend:
    """A `SqliteBackend` on ``path`` with ``synchronous=FULL`` unless told otherwise."""
    from durable_agent.backends.sqlite import SqliteBackend

    options.setdefault("synchronous", "FULL")
    backend: Backend = SqliteBackend(str(path), **options)
    return backend


def sqlite_pragmas(synchronous: str = "FULL") -> tuple[str, ...]:
    """The pragmas of the raw aiosqlite floors: those `SqliteBackend` sets."""
    return (
        "PRAGMA busy_timeout=5000",
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={synchronous}",
    )


def count_transitions(stored: StoredRun) -> int:
    """State transitions of a run: its events that carry a trigger."""
    return sum(1 for e in stored.events if e.trigger is not None)


def event_json_bytes(stored: StoredRun) -> int:
    """Bytes of the run's events as `encode_event` writes them (UTF-8)."""
    return sum(len(encode_event(e).encode()) for e in stored.events)


@dataclass
class BackendTimer:
    """Wraps a backend's write methods on the instance to count calls and time inside them.

    The time is wall time from the call to its return as the engine sees it:
    queueing for a group commit, the driver thread hop and the fsync included.
    """

    backend: Backend
    methods: tuple[str, ...] = ("create_run", "append", "release_lease", "acquire_lease")
    record: bool = False
    """Keep the arguments of every call in ``recorded`` (to replay them without the engine)."""
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    recorded: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in self.methods:
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(self.backend, name)
        self.seconds[name] = 0.0
        self.calls[name] = 0

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if self.record:
                self.recorded.append((name, args, kwargs))
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        object.__setattr__(self.backend, name, timed)

    def reset(self) -> None:
        for name in self.methods:
            self.seconds[name] = 0.0
            self.calls[name] = 0

    @property
    def write_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def write_calls(self) -> int:
        return sum(self.calls.values())


def profile_call(title: str, function: Callable[[], Any], *, limit: int = 30) -> None:
    """Run ``function`` under cProfile and print the top functions by own and total time.

    cProfile sees only the main thread: time aiosqlite spends in its worker
    thread (sqlite3 calls, fsync) shows up as the event loop waiting in
    ``select``/``epoll``.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        function()
    finally:
        profiler.disable()
    for sort in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.strip_dirs().sort_stats(sort).print_stats(limit)
        print(f"\n=== profile: {title}, sorted by {sort} ===")
        print(buffer.getvalue())


def run_script(
    description: str,
    run: Callable[[bool], Sequence[Row]],
    *,
    profile: Callable[[bool], None] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """A benchmark run as a script: its options, the machine, its table, its profile if asked."""
    options = parse_options(description, argv)
    print(machine_summary())
    print_table(run(options.quick))
    if profile is not None and options.profile:
        profile(options.quick)
