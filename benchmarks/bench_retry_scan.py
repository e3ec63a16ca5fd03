"""What one walk of the run-level retry pass costs with many ERROR runs stored.

`durable_agent._worker_retry.RetryScan` walks every page of the ERROR runs (at most once a
second per worker, and for at most a twentieth of its time: these numbers set that share).
Measured on SQLite: 100 to 10,000 runs in ERROR, none retryable (runs kept for inspection:
the case where walks cost the most for nothing), served by the scan's agent.
The first walk reads every run's log once; later walks only list the headers, since what each
log says is remembered by run id and ``seq``. Median of 5 walks each.

Run alone: ``python benchmarks/bench_retry_scan.py [--quick] [--dir DISK]``.
"""

from __future__ import annotations

import asyncio
import time

from _common import (
    Row,
    info,
    machine_summary,
    median,
    open_sqlite,
    parse_options,
    print_table,
    scratch_dir,
)

from durable_agent._worker_retry import RetryScan, RunRetry
from durable_agent.backend import Backend
from durable_agent.fsm import RunState
from durable_agent.records import (
    CreatedEvent,
    ErrorInfo,
    FailedEvent,
    RunHeader,
    TransitionEvent,
    UserMessage,
)

NAME = "retry scan"


async def _fill(store: Backend, failed: int) -> None:
    error = ErrorInfo(type="ToolError", message="a bug", retryable=False)
    for i in range(failed):
        events = [
            CreatedEvent(seq=1, state=RunState.PENDING, messages=(UserMessage(content="go"),)),
            TransitionEvent(seq=2, state=RunState.MODEL_CALL, trigger="start"),
            FailedEvent(seq=3, state=RunState.ERROR, trigger="fail", error=error,
                        failed_state=RunState.MODEL_CALL),
        ]
        header = RunHeader(run_id=f"failed-{i:06d}", agent_name="agent",
                           state=RunState.ERROR, seq=3)
        await store.create_run(header, events)


async def _measure(store: Backend, failed: int) -> list[Row]:
    await _fill(store, failed)

    async def walk(scan: RetryScan) -> float:
        started = time.perf_counter()
        assert await scan.due(limit=10, busy=(), stopping=lambda: False) == []
        return time.perf_counter() - started

    policy = RunRetry()
    first = [await walk(RetryScan(store, policy, agents=["agent"], queues=None, walk_every=0))
             for _ in range(5)]
    scan = RetryScan(store, policy, agents=["agent"], queues=None, walk_every=0)
    await walk(scan)
    later = [await walk(scan) for _ in range(5)]
    return [
        info(NAME, f"first walk, {failed:,} ERROR runs", f"{median(first) * 1e3:.1f} ms"),
        info(NAME, f"later walk, {failed:,} ERROR runs", f"{median(later) * 1e3:.1f} ms"),
    ]


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    for failed in (100, 1_000) if quick else (100, 1_000, 10_000):
        with scratch_dir() as folder:

            async def main(count: int = failed) -> list[Row]:
                store = open_sqlite(folder / "runs.db")
                try:
                    return await _measure(store, count)
                finally:
                    await store.close()

            rows += asyncio.run(main())
    return rows


def main() -> None:
    options = parse_options(__doc__ or NAME)
    print(machine_summary())
    print_table(run(options.quick))


if __name__ == "__main__":
    main()
