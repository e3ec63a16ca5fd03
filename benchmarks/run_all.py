"""Run every benchmark and print one table.

    python benchmarks/run_all.py            # full sizes (about a minute)
    python benchmarks/run_all.py --quick    # smaller sizes, well under a minute (CI)
    python benchmarks/run_all.py --only a,d # a subset, by letter

Each benchmark is also a script of its own (see benchmarks/README.md). The
table reports measured values against targets as PASS/MISS; nothing here
fails on time, and the exit status is 0 unless a benchmark crashed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from _common import Row, machine_summary, print_table, set_scratch_root

BENCHMARKS: dict[str, str] = {
    "a": "bench_engine_overhead",
    "b": "bench_concurrency",
    "c": "bench_storage",
    "d": "bench_load_restore",
    "e": "bench_import",
    "f": "bench_provider_overhead",
    "g": "bench_backends",
    "h": "bench_workers",
    "i": "bench_postgres",
    "j": "bench_streaming",
    "k": "bench_redis_claims",
    "l": "bench_postgres_writer",
}
"""Letter -> module. Each is imported only when chosen, so a benchmark whose optional
dependencies (the vendor SDKs for f) are missing is reported as skipped, not fatal."""


REQUIRES: dict[str, tuple[str, ...]] = {
    "f": ("openai", "anthropic"),
    "i": ("psycopg", "psycopg_pool"),
    "j": ("openai", "anthropic"),
    "l": ("psycopg", "psycopg_pool"),
}
"""Optional packages a benchmark needs; without them it is skipped."""


def load(letter: str) -> tuple[str, Callable[[bool], list[Row]]]:
    missing = [m for m in REQUIRES.get(letter, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"needs {', '.join(missing)} (pip install -e '.[dev]')")
    module = importlib.import_module(BENCHMARKS[letter])
    return str(module.NAME), module.run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (for CI)")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help="comma-separated letters of the benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where temporary databases go (default: the system temp dir); "
        "it must be a real disk, since fsync cost is part of what is measured",
    )
    args = parser.parse_args()
    chosen = [letter.strip() for letter in args.only.split(",") if letter.strip()]
    unknown = [letter for letter in chosen if letter not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    if args.dir is not None:
        set_scratch_root(args.dir)

    print(machine_summary())
    print(f"mode: {'quick' if args.quick else 'full'}\n")
    rows: list[Row] = []
    crashed = False
    started = time.perf_counter()
    for letter in chosen:
        try:
            name, function = load(letter)
        except ImportError as exc:
            rows.append(Row(f"{letter}) {BENCHMARKS[letter]}", f"skipped: {exc}", "-"))
            continue
        began = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(function(args.quick))
        except Exception:
            crashed = True
            traceback.print_exc()
            rows.append(Row(name, "crashed (traceback above)", "-", "", False))
        gc.collect()
        print(f"  {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    print(f"total time: {time.perf_counter() - started:.1f} s")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
